"""The pair data set in ``ase.db`` (SQLite): one row per (unrelaxed, relaxed) pair.

Schema of a row:

* atoms: the unrelaxed defective structure (host order, vacant sites removed);
* the row's calculator results: the teacher's ``energy`` (eV) and forces at the
  unrelaxed positions, so ``row.energy`` and ``row.fmax`` describe the row's own Atoms
  (ase.db reserves the keys ``energy`` and ``fmax`` for exactly that);
* key_value_pairs: ``config_id``, ``material``, ``density`` ("high"/"low"),
  ``concentration``, ``n_defects``, ``split`` ("train"/"val"/"test"), ``teacher``,
  ``optimizer``, ``relax_fmax`` (the criterion, eV/Å), ``final_fmax`` (eV/Å),
  ``converged``, ``steps``, ``relaxed_energy`` (eV, at the relaxed positions);
* data: ``relaxed_positions`` (n, 3) Å, ``pristine_positions`` (n_sites, 3) Å,
  ``pristine_numbers`` (n_sites,), ``site_index`` (n,) pristine index of each atom,
  ``vacancies`` (n_vac,) pristine indices.
"""

from __future__ import annotations

import glob
import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from ase import Atoms
from ase.db import connect
from ase.geometry import find_mic

from ..core.defects import DefectSpec
from ..core.matching import Match
from ..core.structure import DefectStructure

logger = logging.getLogger(__name__)


@dataclass
class Pair:
    """One (unrelaxed, relaxed) defect pair with its pristine host."""

    unrelaxed: Atoms
    relaxed_positions: np.ndarray  # (n, 3) Å
    pristine: Atoms
    spec: DefectSpec
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def site_index(self) -> np.ndarray:
        return self.spec.site_index(len(self.pristine))

    @property
    def structure(self) -> DefectStructure:
        """The unrelaxed side as the one record of a defect structure, from which
        inference, training and evaluation alike build the graph."""
        return DefectStructure.from_sites(self.pristine, self.spec, self.unrelaxed.positions)

    def relaxed(self) -> Atoms:
        at = self.unrelaxed.copy()
        at.positions = self.relaxed_positions
        return at


def pair_from_match(unrelaxed: Atoms, relaxed_positions: np.ndarray, pristine: Atoms,
                    match: Match, info: dict[str, Any] | None = None) -> Pair:
    """A :class:`Pair` in our convention from a defective structure in any atom order and
    periodic image, matched to its host (:func:`~ase_definet.core.matching.match_to_host`).

    Args:
        relaxed_positions: (n, 3) Å, in the order of ``unrelaxed``, any periodic image.

    The unrelaxed atoms are put in host order next to their sites; the relaxed positions
    become the minimum-image continuation of the unrelaxed ones.
    """
    order = np.argsort(match.site_index, kind="stable")
    cell = pristine.cell[:]
    pos = pristine.positions[match.site_index[order]] + match.offsets[order]
    ours = Atoms(numbers=unrelaxed.numbers[order], positions=pos, cell=cell, pbc=pristine.pbc)
    disp, _ = find_mic(np.asarray(relaxed_positions)[order] - pos, cell, pristine.pbc)
    return Pair(unrelaxed=ours, relaxed_positions=pos + disp, pristine=pristine.copy(),
                spec=match.spec, info=dict(info or {}))


def write_pair(db, pair: Pair) -> int:
    """Write ``pair`` as one row (one SQLite transaction). Returns the row id."""
    kvp = {k: v for k, v in pair.info.items() if isinstance(v, (bool, int, float, str, np.number))}
    data = {
        "relaxed_positions": np.asarray(pair.relaxed_positions, dtype=float),
        "pristine_positions": pair.pristine.positions.astype(float),
        "pristine_numbers": pair.pristine.numbers.astype(np.int64),
        "site_index": pair.site_index.astype(np.int64),
        "vacancies": np.array(pair.spec.vacancies, dtype=np.int64),
    }
    return db.write(pair.unrelaxed, key_value_pairs=kvp, data=data)


def row_to_pair(row) -> Pair:
    """Rebuild a :class:`Pair` from an ``ase.db`` row of the schema above."""
    unrelaxed = row.toatoms()
    d = row.data
    pristine = Atoms(numbers=d["pristine_numbers"], positions=d["pristine_positions"],
                     cell=unrelaxed.cell, pbc=unrelaxed.pbc)
    site_index = np.asarray(d["site_index"], dtype=int)
    subs = {int(s): int(z) for s, z in zip(site_index, unrelaxed.numbers)
            if pristine.numbers[s] != z}
    spec = DefectSpec(vacancies=tuple(int(v) for v in d["vacancies"]), substitutions=subs)
    if not np.array_equal(spec.site_index(len(pristine)), site_index):
        raise ValueError(f"row {row.id}: site_index does not follow the host order convention")
    return Pair(unrelaxed=unrelaxed, relaxed_positions=np.asarray(d["relaxed_positions"]),
                pristine=pristine, spec=spec, info=dict(row.key_value_pairs))


def expand_paths(paths: Iterable[str | Path]) -> list[Path]:
    """Expand globs and folders (a folder means its ``*.db`` files)."""
    out: list[Path] = []
    for p in paths:
        p = Path(p)
        if p.is_dir():
            out += sorted(p.glob("*.db"))
        elif any(c in str(p) for c in "*?["):
            out += sorted(Path(x) for x in glob.glob(str(p)))
        elif p.exists():
            out.append(p)
        else:
            raise ValueError(f"no such data file or folder: {p}")
    if not out:
        raise ValueError(f"no data files found in {[str(p) for p in paths]}")
    return out


def iter_pairs(paths: list[str | Path], converged_only: bool = True,
               **selection: Any) -> Iterator[Pair]:
    """Yield pairs from one or more ``ase.db`` files, e.g. ``split="train"``; with
    ``converged_only`` the pairs whose teacher relaxation did not converge are skipped,
    and how many is logged per file. A path that is not a file raises
    FileNotFoundError (nothing is created)."""
    for path in paths:
        if not Path(path).is_file():  # ase.db would create an empty database there
            raise FileNotFoundError(f"{path}: no such pair file")
        with connect(path) as db:
            where = selection
            if converged_only:
                skipped = db.count(**{**selection, "converged": False})
                if skipped:
                    logger.info("%s: %d unconverged pair(s) skipped", path, skipped)
                where = {**selection, "converged": True}
            for row in db.select(**where):
                yield row_to_pair(row)


def is_cold(info: dict[str, Any]) -> bool:
    """Whether a pair's teacher relaxation started from the unrelaxed structure (pairs
    without a ``label_start`` record were all made so), not from a model's prediction."""
    return info.get("label_start", "unrelaxed") == "unrelaxed"


def done_ids(path: str | Path) -> set[str]:
    """The ``config_id`` of every row already in ``path`` (empty if it does not exist)."""
    if not Path(path).exists():
        return set()
    with connect(path) as db:
        return {row.config_id for row in db.select(columns=["key_value_pairs"])}
