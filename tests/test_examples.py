"""Every example runs, on a tiny case (small cell, tiny random checkpoint)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from ase_definet import save_checkpoint

from .conftest import tiny_model

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def load(name: str):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture
def ckpt(tmp_path):
    return str(save_checkpoint(tiny_model(displacement_init=0.02), tmp_path / "m.safetensors"))


def test_drop_in(ckpt):
    moved = load("drop_in_relax").main(["--model", ckpt, "--size", "3"])
    assert len(moved) == 26 and moved.max() > 0


def test_prerelax_then_vasp(tmp_path, ckpt):
    out = load("prerelax_then_vasp").main(["--model", ckpt, "--size", "3", "--outdir",
                                           str(tmp_path / "vasp")])
    assert {"INCAR", "KPOINTS", "POSCAR"} <= set(out["files"])
    incar = (tmp_path / "vasp" / "INCAR").read_text().upper()
    assert "IBRION = 2" in incar and "ISIF = 2" in incar and "EDIFFG = -0.01" in incar


def test_screening(ckpt):
    scores = load("screen_configurations").main(["--model", ckpt, "--n", "6", "--size", "4",
                                                 "--batch-size", "4"])
    assert len(scores) == 6 and scores[0][1] >= scores[-1][1]


def test_finetune_example(tmp_path, ckpt):
    rc = load("finetune_on_new_pairs").main(["--from", ckpt, "--pairs", "6", "--epochs", "2",
                                             "--workdir", str(tmp_path / "ft")])
    assert rc == 0
    assert (tmp_path / "ft" / "run" / "best.safetensors").exists()
    assert (tmp_path / "ft" / "evaluation.csv").exists()


@pytest.mark.slow
def test_prerelax_end_to_end_with_chgnet(tmp_path):
    pytest.importorskip("chgnet")
    ckpt = save_checkpoint(tiny_model(displacement_init=0.0), tmp_path / "zero.safetensors")
    out = load("prerelax_then_vasp").main(["--model", str(ckpt), "--size", "3", "--outdir",
                                           str(tmp_path / "v"), "--teacher", "chgnet"])
    # a model that predicts no displacement saves no steps: the flow measures honestly
    assert out["steps_unrelaxed"] > 0
    assert abs(out["steps_definet"] - out["steps_unrelaxed"]) <= 1
