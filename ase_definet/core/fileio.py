"""Atomic file writes: a new file is written beside its target and renamed onto it only
when complete, so a failed or killed run never leaves a truncated file, and an existing
file of that name stays as it was.

    atomic_write("out/model.safetensors", lambda tmp: save_file(tensors, tmp))
    with atomic_path("log.csv") as tmp:
        tmp.write_text(...)

The file written has the mode of the file it replaces, or else the usual mode of a new
file (``0o666`` less the umask, not mkstemp's ``0o600``). The temporary file has a
hidden name in the target's folder (the rename stays on one file system) and the
target's suffix (for writers that pick a format by it).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def temp_beside(path: str | Path) -> Path:
    """A new empty file in the folder of ``path`` (which must exist), named
    ``.<name>.<random><suffix>``, with the usual file mode. The caller renames or
    removes it."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=path.suffix)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600
    return Path(tmp)


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary path to write ``path``'s new content to: renamed onto ``path`` when
    the block ends normally, removed when it raises (``path`` untouched)."""
    path = Path(path)
    tmp = temp_beside(path)
    try:
        mode = path.stat().st_mode & 0o7777 if path.exists() else tmp.stat().st_mode & 0o7777
        yield tmp
        os.chmod(tmp, mode)  # writers that replace the file (safetensors) make it 0600
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write(path: str | Path, writer: Callable[[Path], Any]) -> Path:
    """Call ``writer(tmp)`` to write the new content to a temporary path, then rename
    it onto ``path``; if ``writer`` raises, ``path`` is left as it was. Returns
    ``path``."""
    path = Path(path)
    with atomic_path(path) as tmp:
        writer(tmp)
    return path


def format_of(path: str | Path) -> str | None:
    """The ase.io format of ``path`` from its name, ``None`` if ase does not know it."""
    from ase.io.formats import filetype

    try:
        return filetype(str(path), read=False)
    except Exception:  # noqa: BLE001  (ase raises several types for unknown names)
        return None


def write_structure(path: str | Path, atoms, fmt: str | None = None) -> Path:
    """Write ``atoms`` with ase.io to ``path`` atomically (format from ``fmt`` or the
    name); non-finite positions are refused before anything is written."""
    from ase.io import write

    from .validate import check_finite

    path = Path(path)
    check_finite(atoms.positions, f"position in the structure for {path}")
    return atomic_write(path, lambda tmp: write(tmp, atoms, format=fmt or format_of(path)))
