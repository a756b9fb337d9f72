"""The definet command line."""

from __future__ import annotations

import json

import pytest
from ase.geometry import find_mic
from ase.io import read, write

from ase_definet import DefectSpec, save_checkpoint
from ase_definet.cli import main as cli

from .conftest import tiny_model


@pytest.fixture
def ckpt(tmp_path):
    return str(save_checkpoint(tiny_model(), tmp_path / "tiny.safetensors", {"data": "none"}))


def test_relax_host_with_spec_and_pair(tmp_path, host, ckpt):
    write(tmp_path / "host.cif", host)
    out = tmp_path / "relaxed.extxyz"
    assert cli(["relax", str(tmp_path / "host.cif"), "--vacancies", "4", "10",
                "--substitute", "0:W", "5:Se", "-o", str(out), "--model", ckpt, "-q",
                "--trajectory", str(tmp_path / "t.traj")]) == 0
    at = read(out)
    assert len(at) == 25 and at[0].symbol == "W"
    assert len(read(tmp_path / "t.traj", ":")) == 2  # the input, the prediction
    d = DefectSpec(vacancies=(4, 10), substitutions={0: "W", 5: "Se"}).apply(host)
    write(tmp_path / "defective.vasp", d, format="vasp")
    out2 = tmp_path / "relaxed2.cif"
    assert cli(["relax", str(tmp_path / "defective.vasp"), "--pristine",
                str(tmp_path / "host.cif"), "-o", str(out2), "--model", ckpt, "-q"]) == 0
    _, dist = find_mic(read(out2).positions - at.positions, host.cell[:])
    assert dist.max() < 1e-3  # same prediction (VASP wrapped some atoms into the cell)


def test_bad_input_exits_cleanly_and_keeps_output(tmp_path, host, ckpt, capsys):
    write(tmp_path / "host.cif", host)
    out = tmp_path / "out.cif"
    out.write_text("precious")
    rc = cli(["relax", str(tmp_path / "host.cif"), "--vacancies", "99", "-o", str(out),
              "--model", ckpt])
    assert rc == 2
    assert "out of range" in capsys.readouterr().err
    assert out.read_text() == "precious"
    rc = cli(["relax", str(tmp_path / "host.cif"), "--substitute", "W", "-o", str(out),
              "--model", ckpt])
    assert rc == 2 and "SITE:ELEMENT" in capsys.readouterr().err


def test_info_and_demo(tmp_path, ckpt, capsys):
    assert cli(["info", ckpt, "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["config"]["hidden"] == 32 and "Mo" in info["config"]["elements"]
    assert info["metadata"] == {"data": "none"}
    assert cli(["demo", "--model", ckpt, "-o", str(tmp_path / "demo.cif"), "--plot",
                str(tmp_path / "demo.png")]) == 0
    assert (tmp_path / "demo.png").read_bytes()[:4] == b"\x89PNG"
    out = capsys.readouterr().out
    assert "Atoms that moved most" in out and "within 3 A" in out
    assert len(read(tmp_path / "demo.cif")) == 190


def test_plot_fields(tmp_path, host, ckpt):
    write(tmp_path / "host.cif", host)
    d = DefectSpec(vacancies=(4,), substitutions={0: "W"}).apply(host)
    write(tmp_path / "d.cif", d)
    ref = d.copy()
    ref.rattle(0.05, seed=1)
    write(tmp_path / "ref.cif", ref)
    assert cli(["plot", str(tmp_path / "d.cif"), "--pristine", str(tmp_path / "host.cif"),
                "-o", str(tmp_path / "f.png"), "--model", ckpt]) == 0
    assert cli(["plot", str(tmp_path / "d.cif"), "--pristine", str(tmp_path / "host.cif"),
                "--reference", str(tmp_path / "ref.cif"), "-o", str(tmp_path / "e.png"),
                "--model", ckpt]) == 0
    assert cli(["plot", str(tmp_path / "d.cif"), "--pristine", str(tmp_path / "host.cif"),
                "--reference", str(tmp_path / "ref.cif"), "--compare",
                "-o", str(tmp_path / "c.png"), "--model", ckpt]) == 0
    for name in ("f.png", "e.png", "c.png"):
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG"
    other = DefectSpec(vacancies=(5,)).apply(host)
    write(tmp_path / "other.cif", other)
    assert cli(["plot", str(tmp_path / "d.cif"), "--pristine", str(tmp_path / "host.cif"),
                "--reference", str(tmp_path / "other.cif"), "-o", str(tmp_path / "x.png"),
                "--model", ckpt]) == 2
    assert cli(["plot", str(tmp_path / "d.cif"), "--pristine", str(tmp_path / "host.cif"),
                "--compare", "-o", str(tmp_path / "y.png"), "--model", ckpt]) == 2
    assert not (tmp_path / "y.png").exists()
