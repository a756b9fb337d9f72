"""Batch files of the generator: locks, completeness checked in the file, plan identity.

* A batch is labelled only by the process holding its lock (``{partial}/{file}.batch-lock``,
  an ``flock`` that the kernel releases when the process dies), so concurrent runs of one
  plan, or of two shards, never label or move the same batch at once.
* "Complete" is a fact read from the file: every planned ``config_id`` present once,
  each with the planned defect configuration, never inferred from a file name.
* The plan's identity (seed, batch size, teacher, criterion, ...) is stored in
  ``{out}/plan.json``; a rerun with other settings is refused with a clear message.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ase.db import connect

from ..core.fileio import atomic_write
from .store import row_to_pair

logger = logging.getLogger(__name__)

PLAN_FILE = "plan.json"


class PlanConflict(ValueError):
    """The output folder holds data of another plan."""


class BatchLock:
    """A non-blocking exclusive lock on one batch file; ``acquire()`` is False when
    another process holds it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    def acquire(self) -> bool:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self._fd = fd
        return True

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


def read_batch(path: Path) -> dict[str, list]:
    """config_id -> list of defect specs in the file (a list, to reveal duplicates)."""
    found: dict[str, list] = {}
    if not path.exists():
        return found
    with connect(path) as db:
        for row in db.select():
            found.setdefault(row.config_id, []).append(row_to_pair(row).spec)
    return found


def check_batch(path: Path, batch: Sequence[Any]) -> str:
    """State of a batch file against its planned jobs: ``"missing"``, ``"complete"``
    (every planned pair present once, with the planned defects) or ``"partial"`` (a
    subset of them: a file of a smaller plan, or one in progress). Raises
    :class:`PlanConflict` when the file holds duplicates or other configurations."""
    if not path.exists():
        return "missing"
    found = read_batch(path)
    planned = {j.config.config_id: j.config.spec for j in batch}
    dups = sorted(k for k, v in found.items() if len(v) > 1)
    if dups:
        raise PlanConflict(f"{path}: config_id(s) {dups[:5]} stored more than once; the "
                           "file was written by concurrent or conflicting runs")
    other = sorted(k for k, v in found.items() if k in planned and v[0] != planned[k])
    if other:
        raise PlanConflict(f"{path}: {len(other)} pair(s) (e.g. {other[0]}) hold other "
                           "defects than this plan (another --seed or plan?)")
    extra = set(found) - set(planned)
    if extra and not set(planned) <= set(found):
        raise PlanConflict(f"{path}: holds config_id(s) this plan puts in other files "
                           f"(e.g. {min(extra)}; another --batch-size?)")
    return "complete" if set(planned) <= set(found) else "partial"


def finish(partial: Path, final: Path, batch: Sequence[Any]) -> None:
    """Move a complete batch file into place atomically after checking its contents."""
    state = check_batch(partial, batch)
    if state != "complete":
        raise RuntimeError(f"{partial}: batch not complete ({state}); not moved")
    atomic_write(final, lambda tmp: shutil.copyfile(partial, tmp))
    partial.unlink()
    logger.info("batch complete: %s", final)


def check_identity(out: Path, identity: dict[str, Any]) -> None:
    """Store ``identity`` in ``out/plan.json`` or refuse a conflicting one. Plan sizes
    may grow (prefix-stable plans extend, they never change what was labelled)."""
    path = out / PLAN_FILE
    if path.exists():
        stored = json.loads(path.read_text())
        diff = {k: (stored.get(k), v) for k, v in identity.items() if stored.get(k) != v}
        if diff:
            text = ", ".join(f"{k}: stored {a!r}, now {b!r}" for k, (a, b) in diff.items())
            raise PlanConflict(f"{out} holds pairs of another plan ({text}); use another "
                               "--out or the stored settings")
        return
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(identity, indent=1, sort_keys=True) + "\n")
    try:
        os.link(tmp, path)  # atomic, and never over a file another run just wrote
    except FileExistsError:
        check_identity(out, identity)
    finally:
        tmp.unlink()
