"""Relabel warm-started pairs from the unrelaxed structure (cold), file by file.

    definet relabel 'data/variety/*.db' --materials GaSe InSe BP

A warm-started label (``label_start = "prediction"``, :mod:`.generate`) is the teacher's
minimum reached from a model's prediction. Where it lies within the label noise of the
cold one it saves teacher steps for nothing; where it does not (the soft hosts, see
``benchmarks/warm_start.py``) the pair is relabelled here: the teacher relaxes the
unrelaxed structure with the criterion the row records, and the row becomes a cold one
(``label_start = "unrelaxed"``, ``relabelled`` saying what it was). Every other row is
copied unchanged, in order. Each file is rewritten atomically once all its pairs are
done, so an interrupted run leaves it as it was; a file whose batch lock
(``NAME.batch-lock`` beside it) a generator holds is skipped.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from pathlib import Path

from ase.db import connect
from ase.calculators.calculator import Calculator
from tqdm.auto import tqdm

from ..core.fileio import atomic_path
from .batchfiles import BatchLock
from .label import relax_fixed_cell
from .store import Pair, row_to_pair, write_pair

logger = logging.getLogger(__name__)

ENERGY_TOLERANCE = 1e-3  # eV: the row's unrelaxed energy against the teacher's now


def _warm_rows(path: Path, materials: set[str] | None) -> list[int]:
    with connect(path) as db:
        return [r.id for r in db.select() if r.get("label_start") == "prediction"
                and (materials is None or r.get("material") in materials)]


def relabel_file(path: str | Path, calc: Calculator, teacher_name: str,
                 materials: Iterable[str] | None = None, steps: int = 1000,
                 progress: bool = True) -> int:
    """Relabel the warm-started pairs of ``materials`` (default all) in one ``ase.db``
    file from their unrelaxed structures with ``calc``, whose name must be the
    ``teacher`` the rows record. Returns the number relabelled; -1 when a generator
    holds the file's batch lock (the file is left alone)."""
    path = Path(path)
    wanted = None if materials is None else set(materials)
    lock = BatchLock(path.with_name(f"{path.name}.batch-lock"))
    if not lock.acquire():
        logger.warning("%s: being labelled by a generator; skipped", path)
        return -1
    try:
        todo = set(_warm_rows(path, wanted))
        if not todo:
            return 0
        with atomic_path(path) as tmp, connect(path) as db:
            rows = list(db.select())
            with connect(tmp) as out:
                for row in tqdm(rows, desc=path.name, unit="pair", disable=not progress):
                    if row.id in todo:
                        write_pair(out, _cold(row, calc, teacher_name, steps))
                    else:
                        out.write(row, data=row.data)
        logger.info("%s: %d warm-started pair(s) relabelled from the unrelaxed structure",
                    path, len(todo))
        return len(todo)
    finally:
        lock.release()


def _cold(row, calc: Calculator, teacher_name: str, steps: int) -> Pair:
    pair = row_to_pair(row)
    if row.get("teacher") != teacher_name:
        raise ValueError(f"{row.config_id}: labelled by {row.get('teacher')!r}, not by "
                         f"{teacher_name!r}: relabel with the teacher it records")
    res = relax_fixed_cell(pair.unrelaxed, calc, fmax=row.relax_fmax, steps=steps,
                           optimizer=row.optimizer)
    if abs(res.initial_energy - row.energy) > ENERGY_TOLERANCE:
        raise ValueError(f"{row.config_id}: the teacher's energy at the unrelaxed structure "
                         f"is {res.initial_energy:.4f} eV, the row records {row.energy:.4f} "
                         "eV: not the teacher that labelled it")
    info = dict(pair.info)
    was = info.pop("start_model", "a model")
    info.update(final_fmax=res.fmax, converged=res.converged, steps=res.steps,
                relaxed_energy=res.energy, label_start="unrelaxed",
                relabelled=f"cold; first warm-started from {was}")
    return Pair(pair.unrelaxed, res.positions, pair.pristine, pair.spec, info)


def relabel(paths: Sequence[str | Path], teacher: str = "chgnet",
            materials: Iterable[str] | None = None, steps: int = 1000,
            progress: bool = True) -> dict[Path, int]:
    """:func:`relabel_file` on every file; path -> pairs relabelled (-1: skipped)."""
    from .teacher import get_teacher, teacher_version

    calc, name = get_teacher(teacher), teacher_version(teacher)
    return {Path(p): relabel_file(p, calc, name, materials, steps, progress) for p in paths}


def add_command(sub) -> None:
    """``definet relabel``."""
    r = sub.add_parser("relabel", help="relabel warm-started pairs from the unrelaxed "
                       "structure (cold), in place and atomically")
    r.add_argument("paths", nargs="+", help="ase.db pair files; quote globs (expanded here)")
    r.add_argument("--materials", nargs="+", default=None, metavar="HOST",
                   help="only the pairs of these hosts (default: all warm-started pairs)")
    r.add_argument("--teacher", default="chgnet", help="must be the teacher the rows record")
    r.add_argument("--steps", type=int, default=1000, help="optimizer step cap")
    r.set_defaults(func=_run)


def _run(args) -> int:
    from .store import expand_paths

    done = relabel(expand_paths(args.paths), args.teacher, args.materials, args.steps)
    for path, n in done.items():
        if n:
            print(f"{path}: {'skipped (locked)' if n < 0 else f'{n} relabelled'}")
    print(f"relabelled {sum(n for n in done.values() if n > 0)} pair(s) in "
          f"{sum(n > 0 for n in done.values())} file(s)")
    return 1 if any(n < 0 for n in done.values()) else 0
