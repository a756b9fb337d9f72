"""The README's fine-tuning commands run verbatim, on pairs from the committed data."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import numpy as np
from ase.geometry import find_mic
from ase.io import read, write

from ase_definet.cli import main as cli
from ase_definet.data.store import iter_pairs

ROOT = Path(__file__).resolve().parent.parent


def readme_block(after: str) -> list[str]:
    """The commands of the first ```bash block after the line containing ``after``."""
    text = (ROOT / "README.md").read_text()
    start = text.index(after)
    block = re.search(r"```bash\n(.*?)```", text[start:], re.DOTALL).group(1)
    return [line.split("#")[0].strip() for line in block.splitlines() if line.strip()]


def test_readme_finetune_commands_run_verbatim(tmp_path, monkeypatch, capsys):
    commands = readme_block("Fine-tune the default weights on your own pairs")
    assert len(commands) == 3 and all(c.startswith("definet ") for c in commands)
    pairs = list(iter_pairs([ROOT / "data" / "MoS2_low_000.db"]))[:9]
    frames = []
    for p in pairs[:6]:
        frames += [p.unrelaxed, p.relaxed()]
    write(tmp_path / "my_pairs.extxyz", frames)
    write(tmp_path / "my_test_pairs.extxyz", [a for p in pairs[6:8]
                                               for a in (p.unrelaxed, p.relaxed())])
    write(tmp_path / "host.cif", pairs[0].pristine)
    write(tmp_path / "my_defect.cif", pairs[8].unrelaxed)
    monkeypatch.chdir(tmp_path)
    for command in commands:
        assert cli(shlex.split(command)[1:]) == 0, command
    out = capsys.readouterr().out
    assert "on 2 pairs (all)" in out  # the test file carries no split: all of it
    assert (tmp_path / "runs" / "ft" / "best.md").read_text().startswith("# Model card")
    relaxed, start = read(tmp_path / "relaxed.cif"), read(tmp_path / "my_defect.cif")
    assert len(relaxed) == len(start)
    d, _ = find_mic(relaxed.positions - start.positions, start.cell, start.pbc)
    moved = np.linalg.norm(d, axis=1)
    assert 0 < moved.max() < 1.0  # a fine-tuned model moves atoms, and not wildly
