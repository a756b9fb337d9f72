"""Read the 2DMD folder layout into (unrelaxed, relaxed) :class:`Pair` objects labelled
against the ideal supercell of each material's unit cell (see the package docstring)."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from ase import Atoms
from ase.geometry import find_mic, get_distances
from scipy.optimize import linear_sum_assignment
from tqdm import tqdm

from ...core.matching import cell_change
from ..store import Pair, pair_from_match
from .layout import (
    SOURCE,
    UNASSIGNED,
    canonical_keys,
    check_density,
    find_material_folders,
    find_unit_cell,
    index_structures,
    read_splits,
    read_structure,
    standard_orientation,
    structure_dir,
)
from .supercell import absorb_rigid_offset, ideal_supercell, match_with_shift

logger = logging.getLogger(__name__)


def _relaxed_order(unrelaxed: Atoms, relaxed: Atoms, tolerance: float, path: Path) -> np.ndarray:
    """(n,) index into ``relaxed`` of the atom that corresponds to each atom of
    ``unrelaxed``: the file order when no atom moved more than ``tolerance`` Å, else an
    optimal same-species assignment by minimum-image distance, else (same species in the
    same order) the file order again, logged.

    Raises:
        ValueError: other atom count, cell or elements, or no assignment within
            ``tolerance`` for reordered species.
    """
    n = len(unrelaxed)
    if len(relaxed) != n:
        raise ValueError(f"relaxed structure {str(path)!r} has {len(relaxed)} atoms, the "
                         f"unrelaxed one {n}")
    change = cell_change(unrelaxed, relaxed)
    if change is not None:
        raise ValueError(f"relaxed structure {str(path)!r} has another cell or pbc than the "
                         f"unrelaxed one ({change})")
    cell = unrelaxed.cell[:]
    same_species = np.array_equal(relaxed.numbers, unrelaxed.numbers)
    ident = np.arange(n)
    if same_species:
        _, d = find_mic(relaxed.positions - unrelaxed.positions, cell, pbc=True)
        if d.max() <= tolerance:
            return ident
    if sorted(relaxed.numbers) != sorted(unrelaxed.numbers):
        raise ValueError(f"relaxed structure {str(path)!r} has other elements "
                         f"({relaxed.get_chemical_formula()}) than the unrelaxed one "
                         f"({unrelaxed.get_chemical_formula()})")
    _, dist = get_distances(unrelaxed.positions, relaxed.positions, cell=cell, pbc=True)
    dist[unrelaxed.numbers[:, None] != relaxed.numbers[None]] = 1e6
    rows, cols = linear_sum_assignment(dist)
    order = cols[np.argsort(rows)]
    worst = dist[np.arange(n), order].max()
    if worst <= tolerance:
        logger.debug("%s: relaxed atoms reordered to match the unrelaxed ones", path)
        return order
    if same_species:
        logger.info("%s: an atom moves %.2f A on relaxation (more than %.2f A); keeping the "
                    "file's atom order", path, float(d.max()), tolerance)
        return ident
    raise ValueError(f"cannot match the atoms of relaxed structure {str(path)!r} to the "
                     f"unrelaxed ones: an atom is {worst:.2f} A from its partner "
                     f"(tolerance {tolerance} A)")


@dataclass
class _MaterialReader:
    """Labels the structures of one material folder; remembers the rigid shift (3,) Å of
    the unit cell found last and the ideal supercells by cell."""

    material: str
    density: str
    folder: Path
    struct_dir: Path
    unit_cell: Atoms
    tolerance: float
    shift: np.ndarray | None = None
    _pristine_cache: dict[tuple[float, ...], Atoms] = field(default_factory=dict)

    def pristine_for(self, cell: np.ndarray) -> Atoms:
        """The ideal supercell with lattice ``cell`` (3, 3) Å (cached; do not modify)."""
        key = tuple(np.round(cell, 6).ravel().tolist())
        if key not in self._pristine_cache:
            p = ideal_supercell(self.unit_cell, cell)
            p.info = {"material": self.material}
            self._pristine_cache[key] = p
        return self._pristine_cache[key]

    def pair(self, atoms_id: str, files: Mapping[str, tuple[Path, str]], split: str) -> Pair:
        """The pair of one structure id from its ``files`` (kind -> (path, ase format))."""
        upath, ufmt = files["unrelaxed"]
        rpath, rfmt = files["relaxed"]
        unrelaxed = read_structure(upath, ufmt)
        relaxed = read_structure(rpath, rfmt)
        try:
            pristine = self.pristine_for(unrelaxed.cell[:])
            match, pristine, shift = match_with_shift(
                unrelaxed, pristine, self.unit_cell, self.tolerance, self.shift)
        except ValueError as err:
            raise ValueError(f"unmatched structure {str(upath)!r} ({self.material} "
                             f"unit cell): {err}") from None
        match, pristine, shift = absorb_rigid_offset(match, pristine, shift)
        if shift.any() and (self.shift is None or not np.allclose(shift, self.shift)):
            logger.info("%s %s: the unit cell's sites are translated by %s A to match %s",
                        self.material, self.density, np.round(shift, 4).tolist(), upath.name)
            self.shift = shift
        rorder = _relaxed_order(unrelaxed, relaxed, self.tolerance, rpath)
        info = {"material": self.material, "density": self.density, "split": split,
                "atoms_id": atoms_id, "source": SOURCE, "n_defects": match.spec.n_defects}
        return pair_from_match(unrelaxed, relaxed.positions[rorder], pristine, match, info)


_Job = tuple[_MaterialReader, dict[str, dict[str, tuple[Path, str]]], dict[str, str]]


def iter_2dmd(root: str | Path, material: str | None = None, density: str = "high",
              tolerance: float = 1.0, *, unit_cells: Mapping[str, Atoms] | None = None,
              errors: str = "raise", progress: bool = True) -> Iterator[Pair]:
    """Yield the (unrelaxed, relaxed) pairs of a 2DMD folder layout (see package doc).

    Args:
        root: folder holding the material folders of one density (and, or in its
            parent, the unit-cell CIFs).
        material: one material (ours, e.g. ``"hBN"``, or a 2DMD name, ``"BN"``); ``None``
            reads every material folder found.
        density: ``"high"`` (``CIF/``) or ``"low"`` (``CIF_POSCAR/``); stored in the info.
        tolerance: Å, largest distance of an unrelaxed atom from its ideal site, and of a
            relaxed atom from its unrelaxed position when re-matching reordered files.
        unit_cells: optional unit cells by material name, instead of the CIF files.
        errors: ``"raise"``, or ``"skip"`` to log and skip structures that cannot be read
            or matched.
        progress: show a tqdm progress bar.

    Yields:
        :class:`Pair` per structure id (materials in folder order, ids sorted): unrelaxed
        in host order with vacancies removed; ``relaxed_positions`` (n, 3) Å the
        minimum-image continuation of the unrelaxed positions; ``pristine`` the ideal
        supercell; ``info`` with ``material``, ``density``, ``split`` (``"train"``,
        ``"val"``, ``"test"`` or ``"unassigned"``), ``atoms_id``, ``source="2DMD"`` and
        ``n_defects``.

    Raises:
        ValueError: missing folder or unit cell, a structure file missing or unreadable,
            or an unmatched structure (the message names the file). Folder, unit-cell and
            split errors are raised by the call, structure errors while iterating.
    """
    check_density(density)
    if errors not in ("raise", "skip"):
        raise ValueError(f"errors must be 'raise' or 'skip', got {errors!r}")
    if tolerance <= 0:
        raise ValueError(f"tolerance must be positive, got {tolerance}")
    root = Path(root)
    folders = find_material_folders(root, density, material)
    given = canonical_keys(unit_cells)
    jobs: list[_Job] = []
    for name, folder in folders.items():
        if name in given:
            unit = standard_orientation(given[name].copy())
        else:
            path = find_unit_cell(name, [root, root.parent])
            unit = read_structure(path, "cif")
            logger.debug("%s: unit cell %s", name, path)
        struct_dir = structure_dir(folder, density)
        assert struct_dir is not None
        splits = read_splits(folder)
        index = index_structures(struct_dir)
        missing = sorted(set(splits) - set(index))
        if missing:
            aid = missing[0]
            raise ValueError(f"atoms_id {aid!r} of {splits[aid]}.csv in {str(folder)!r} has no "
                             f"structure files in {str(struct_dir)!r} ({len(missing)} such ids)")
        jobs.append((_MaterialReader(name, density, folder, struct_dir, unit, tolerance),
                     index, splits))
    return _iterate(jobs, errors, progress)


def _iterate(jobs: list[_Job], errors: str, progress: bool) -> Iterator[Pair]:
    for reader, index, splits in jobs:
        n_skip = 0
        ids = sorted(index)
        if not ids:
            logger.warning("%s: no structure files", reader.struct_dir)
        for aid in tqdm(ids, desc=f"2DMD {reader.material} {reader.density}", unit="pair",
                        disable=not progress):
            files = index[aid]
            try:
                for kind in ("unrelaxed", "relaxed"):
                    if kind not in files:
                        other = next(iter(files.values()))[0]
                        raise ValueError(f"missing {kind} structure for atoms_id {aid!r} "
                                         f"(found {str(other)!r})")
                pair = reader.pair(aid, files, splits.get(aid, UNASSIGNED))
            except ValueError as err:
                if errors == "raise":
                    raise
                n_skip += 1
                logger.warning("skipping %s: %s", aid, err)
                continue
            yield pair
        if n_skip:
            logger.warning("%s %s: skipped %d of %d structures", reader.material,
                           reader.density, n_skip, len(ids))


def read_2dmd(root: str | Path, material: str | None = None, density: str = "high",
              tolerance: float = 1.0, **kwargs) -> list[Pair]:
    """All pairs of a 2DMD folder layout as a list; see :func:`iter_2dmd` (same arguments,
    keyword-only ``unit_cells``, ``errors``, ``progress``)."""
    return list(iter_2dmd(root, material, density, tolerance, **kwargs))
