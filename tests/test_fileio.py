"""One atomic-write helper: the usual file mode, and a failed write leaves the old file."""

from __future__ import annotations

import os
import stat

import pytest

from ase_definet.core.fileio import atomic_path, atomic_write


def test_atomic_write_gives_the_usual_mode_and_replaces_only_on_success(tmp_path):
    path = tmp_path / "out.txt"
    old = os.umask(0o022)
    try:
        atomic_write(path, lambda tmp: tmp.write_text("first"))
    finally:
        os.umask(old)
    assert path.read_text() == "first"
    assert stat.S_IMODE(path.stat().st_mode) == 0o644  # not mkstemp's 0600

    def fails(tmp):
        tmp.write_text("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write(path, fails)
    assert path.read_text() == "first"  # never truncated
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]  # no temp left

    with pytest.raises(KeyboardInterrupt), atomic_path(tmp_path / "new.txt") as tmp:
        tmp.write_text("x")
        raise KeyboardInterrupt
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]


def test_a_checkpoint_keeps_the_mode_of_the_file_it_replaces_and_is_readable_when_new(tmp_path):
    from ase_definet.core.checkpoint import save_checkpoint

    from .conftest import tiny_model

    model = tiny_model(0)
    old = os.umask(0o022)
    try:
        new = save_checkpoint(model, tmp_path / "new.safetensors", {})
        assert stat.S_IMODE(new.stat().st_mode) == 0o644  # safetensors alone gives 0600
        os.chmod(new, 0o640)
        save_checkpoint(model, new, {"note": "updated"})  # in place, e.g. definet calibrate
        assert stat.S_IMODE(new.stat().st_mode) == 0o640
    finally:
        os.umask(old)
