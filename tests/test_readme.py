"""The README's fine-tuning commands run as written, on VASP runs made in the test.

The default test swaps the shipped three-stage weights for a tiny checkpoint (the
commands are otherwise verbatim, and take seconds); the verbatim run with the shipped
weights is marked slow.
"""

from __future__ import annotations

import csv
import re
import shlex
from pathlib import Path

import numpy as np
import pytest
from ase.geometry import find_mic
from ase.io import read, write

from ase_definet import save_checkpoint
from ase_definet.cli import main as cli
from ase_definet.core.checkpoint import read_metadata

from .conftest import tiny_model
from .vasp_files import cu_host, defect_runs, defective, write_vasprun

ROOT = Path(__file__).resolve().parent.parent
AFTER = "Fine-tune the default weights on your own DFT relaxations"


def readme_block(after: str) -> list[str]:
    """The commands of the first ```bash block after the line containing ``after``."""
    text = (ROOT / "README.md").read_text()
    start = text.index(after)
    block = re.search(r"```bash\n(.*?)```", text[start:], re.DOTALL).group(1)
    return [line.split("#")[0].strip() for line in block.splitlines() if line.strip()]


def make_inputs(folder: Path) -> list[list]:
    """runs/ (6 VASP relaxations), test_runs/ (2), host.cif and my_defect.cif in
    ``folder``; returns the test runs' frames."""
    host = cu_host()
    write(folder / "host.cif", host)
    runs = defect_runs(8, seed=3)
    for k, frames in enumerate(runs[:6]):
        write_vasprun(folder / "runs" / f"r{k}" / "vasprun.xml", frames)
    for k, frames in enumerate(runs[6:]):
        write_vasprun(folder / "test_runs" / f"t{k}" / "vasprun.xml", frames)
    write(folder / "my_defect.cif", defective(host, [4], {9: "Au"}))
    return runs[6:]


def run_readme(tmp_path: Path, monkeypatch, weights: str | None = None) -> list[list]:
    commands = readme_block(AFTER)
    assert len(commands) == 3 and all(c.startswith("definet ") for c in commands)
    assert "--data 'runs/*/vasprun.xml'" in commands[0]  # the VASP route comes first
    test_runs = make_inputs(tmp_path)
    monkeypatch.chdir(tmp_path)
    for command in commands:
        if weights:
            command = command.replace("--from default", f"--from {weights}")
        assert cli(shlex.split(command)[1:]) == 0, command
    return test_runs


def check_outputs(tmp_path: Path, test_runs: list[list]) -> None:
    # fine-tuning: the starting and the selected validation MAE, in the checkpoint
    _, meta = read_metadata(tmp_path / "ft" / "best.safetensors")
    m = meta["metrics"]
    assert m["start_val_dummy_mae"] == pytest.approx(m["val_dummy_mae"])  # same val pair
    assert 0 < m["val_mae"] < 0.2 and 0 < m["start_val_mae"] < 0.5
    assert meta["n_train"] == 5 and meta["n_val"] == 1 and meta["selected_epoch"] >= 1
    assert (tmp_path / "ft" / "best.md").read_text().startswith("# Model card")
    # evaluate: all 2 test runs (they carry no split); its Dummy is the runs' own mean
    # displacement from first to last ionic step
    with open(tmp_path / "ft" / "evaluation.csv") as fh:
        rows = {r["group"]: r for r in csv.DictReader(fh)}
    moved = np.concatenate([find_mic(f[-1].positions - f[0].positions, f[0].cell, True)[1]
                            for f in test_runs])
    overall = rows["overall"]
    assert int(overall["n_atoms"]) == len(moved)
    assert float(overall["mae_dummy_all"]) == pytest.approx(moved.mean(), abs=1e-5)
    assert 0 < float(overall["mae_all"]) < 0.2
    # relax: the fine-tuned model moves the atoms, and not wildly
    relaxed, start = read(tmp_path / "relaxed.cif"), read(tmp_path / "my_defect.cif")
    assert len(relaxed) == len(start)
    d, _ = find_mic(relaxed.positions - start.positions, start.cell, start.pbc)
    assert 0 < np.linalg.norm(d, axis=1).max() < 0.5


def test_readme_finetune_commands_on_vasp_runs(tmp_path, monkeypatch):
    """The README's commands with a tiny checkpoint in place of the shipped weights."""
    tiny = save_checkpoint(tiny_model(hidden=16, layers=2, displacement_init=0.02,
                                      elements=[29, 47, 79]), tmp_path / "tiny.safetensors")
    check_outputs(tmp_path, run_readme(tmp_path, monkeypatch, weights=str(tiny)))


@pytest.mark.slow
def test_readme_finetune_commands_verbatim(tmp_path, monkeypatch):
    """The README's commands exactly as written, with the shipped default weights."""
    check_outputs(tmp_path, run_readme(tmp_path, monkeypatch))
