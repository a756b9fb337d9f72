"""Write :class:`Pair` objects in the 2DMD folder layout, readable by :func:`read_2dmd`."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
from ase import Atoms
from ase.io import write
from tqdm import tqdm

from ...core.hosts import get_host, host_names
from ..store import Pair
from .layout import (
    ID_RE,
    SPLITS,
    STRUCTURE_DIRS,
    UNASSIGNED,
    bare,
    canonical_keys,
    canonical_material,
    in_standard_orientation,
    read_structure,
    standard_orientation,
    unit_cell_file,
    write_splits,
)
from .supercell import ideal_supercell, is_rigid_translation

logger = logging.getLogger(__name__)

_Group = list[tuple[str, str, Pair]]  # (atoms_id, split, pair) of one material and density


def _same_structure(a: Atoms, b: Atoms, atol: float = 1e-4) -> bool:
    """Same atoms, cell parameters and positions up to lattice vectors, to ``atol`` Å."""
    if len(a) != len(b) or not np.array_equal(a.numbers, b.numbers):
        return False
    if not np.allclose(a.cell.cellpar(), b.cell.cellpar(), atol=atol):
        return False
    d = a.get_scaled_positions(wrap=False) - b.get_scaled_positions(wrap=False)
    return bool(np.allclose(d - np.round(d), 0.0, atol=atol / max(a.cell.lengths())))


def _check_pair(pair: Pair, unit: Atoms, k: int | str) -> None:
    """The pair must be consistent with its spec and with the unit cell's supercell."""
    aid = pair.info.get("atoms_id", k)
    n_sites = len(pair.pristine)
    if len(pair.unrelaxed) != n_sites - len(pair.spec.vacancies) or not np.array_equal(
            pair.unrelaxed.numbers, pair.spec.defective_numbers(pair.pristine)):
        raise ValueError(f"pair {aid!r}: its unrelaxed atoms do not follow its spec and pristine")
    if np.shape(pair.relaxed_positions) != (len(pair.unrelaxed), 3):
        raise ValueError(f"pair {aid!r}: relaxed_positions has shape "
                         f"{np.shape(pair.relaxed_positions)}, expected ({len(pair.unrelaxed)}, 3)")
    try:
        ideal = ideal_supercell(unit, pair.pristine.cell[:])
    except ValueError as err:
        raise ValueError(f"pair {aid!r}: its pristine is not a supercell of the unit cell of "
                         f"{pair.info['material']!r}: {err}") from None
    if not is_rigid_translation(pair.pristine, ideal):
        raise ValueError(f"pair {aid!r}: its pristine is not the ideal supercell of the "
                         f"{pair.info['material']!r} unit cell in the same site order (pass the "
                         "unit cell it was built from in unit_cells)")


def _group_pairs(pairs: list[Pair]) -> dict[tuple[str, str], _Group]:
    """(material, density) -> its pairs with their atoms_id and split, validated."""
    groups: dict[tuple[str, str], _Group] = {}
    for k, pair in enumerate(pairs):
        info = pair.info or {}
        if not info.get("material"):
            raise ValueError(f"pair {k} has no info['material']")
        material = canonical_material(str(info["material"]))
        density = info.get("density", "high")
        if density not in STRUCTURE_DIRS:
            raise ValueError(f"pair {k}: density must be 'high' or 'low', got {density!r}")
        split = info.get("split") or UNASSIGNED
        if split not in (*SPLITS, UNASSIGNED):
            raise ValueError(f"pair {k}: split must be one of {[*SPLITS, UNASSIGNED]}, "
                             f"got {split!r}")
        group = groups.setdefault((material, density), [])
        aid = info.get("atoms_id") or info.get("config_id") or \
            f"{material}-{density}-{len(group):05d}"
        aid = str(aid)
        if not ID_RE.match(aid):
            raise ValueError(f"pair {k}: atoms_id {aid!r} is not a safe file name (letters, "
                             "digits and . _ + = -, not starting with . _ + = -)")
        group.append((aid, split, pair))
    return groups


def _unit_cells(materials: Iterable[str], given: Mapping[str, Atoms]) -> dict[str, Atoms]:
    """Unit cell of every material: given, else the registered host's."""
    units: dict[str, Atoms] = {}
    for material in sorted(set(materials)):
        if material in given:
            units[material] = given[material]
        elif material in host_names():
            units[material] = get_host(material).unit_cell
        else:
            raise ValueError(f"missing unit cell of {material!r}: it is not a registered "
                             f"host; pass unit_cells={{{material!r}: atoms}}")
    return units


def write_2dmd(pairs: Iterable[Pair], root: str | Path,
               unit_cells: Mapping[str, Atoms] | None = None, *, overwrite: bool = False,
               low_density_subdir: str = "low_density", progress: bool = True) -> list[Path]:
    """Write pairs in the 2DMD folder layout, readable by :func:`read_2dmd`.

    High-density pairs go to ``root/{material}/CIF/{id}_unrelaxed.cif`` and
    ``..._relaxed.cif``, low-density ones to
    ``root/{low_density_subdir}/{material}/CIF_POSCAR/...``; every material folder gets
    ``train.csv``, ``val.csv``, ``test.csv`` (column ``atoms_id``; pairs with split
    ``"unassigned"`` or none are in no csv file). The unit cells are written to ``root``
    under their 2DMD names (``BN.cif``, ``P.cif``, ...; ``{material}.cif`` for others).
    Read back with ``read_2dmd(root)`` and
    ``read_2dmd(root / low_density_subdir, density="low")``. Folders use our material names.

    Each pair's ``info`` needs ``material``; ``density`` defaults to ``"high"``,
    ``split`` to ``"unassigned"``; the id is ``atoms_id``, else ``config_id``, else
    ``{material}-{density}-{k:05d}`` (k = position among that material's pairs).
    Positions are written as fractional coordinates with full float precision; CIF
    keeps only the cell parameters, so cells come back in ASE's standard orientation.

    Args:
        pairs: pairs whose ``pristine`` is the ideal supercell of the material's unit
            cell (up to a rigid translation) in :meth:`ase.Atoms.repeat` site order.
        root: output folder (created).
        unit_cells: unit cell by material name; default
            ``ase_definet.core.hosts.get_host(name).unit_cell`` for registered hosts.
        overwrite: replace existing files; otherwise an existing target file is a
            ``ValueError`` (an existing identical unit-cell file is left as it is).
        low_density_subdir: sub-folder of ``root`` for low-density materials.
        progress: show a tqdm progress bar.

    Returns:
        The material folders written.

    Raises:
        ValueError: missing material or unit cell, bad density/split/id, duplicate ids,
            inconsistent pairs, or existing files without ``overwrite``. Nothing is
            written then.
    """
    pairs = list(pairs)
    if not pairs:
        raise ValueError("no pairs to write")
    root = Path(root)
    groups = _group_pairs(pairs)
    units = _unit_cells((m for m, _ in groups), canonical_keys(unit_cells))

    # plan: (path, kind, payload); check everything before writing anything
    plan: list[tuple[Path, str, object]] = []
    folders: list[Path] = []
    for (material, density), group in groups.items():
        ids = [aid for aid, _, _ in group]
        dup = sorted({i for i in ids if ids.count(i) > 1})
        if dup:
            raise ValueError(f"duplicate atoms_id(s) for {material} {density}: {dup[:5]}")
        for aid, _, pair in group:
            _check_pair(pair, units[material], aid)
        base = root / low_density_subdir if density == "low" and low_density_subdir else root
        folder = base / material
        if folder in folders:
            raise ValueError(f"high- and low-density {material} pairs would share {str(folder)!r}; "
                             "use a non-empty low_density_subdir")
        folders.append(folder)
        sdir = folder / STRUCTURE_DIRS[density]
        for aid, _, pair in group:
            plan.append((sdir / f"{aid}_unrelaxed.cif", "atoms", pair.unrelaxed))
            plan.append((sdir / f"{aid}_relaxed.cif", "atoms", pair.relaxed()))
        for split in SPLITS:
            plan.append((folder / f"{split}.csv", "csv", [a for a, s, _ in group if s == split]))
        if any(not in_standard_orientation(p.unrelaxed.cell, atol=1e-6) for _, _, p in group):
            logger.warning("%s %s: cells are not in ASE's standard orientation; they are read "
                           "back rotated (fractional coordinates are kept)", material, density)
    for material, unit in units.items():
        path = root / unit_cell_file(material)
        if path.is_file() and not overwrite:
            try:
                same = _same_structure(read_structure(path, "cif"),
                                       standard_orientation(unit.copy()))
            except ValueError:
                same = False
            if same:
                continue
        plan.append((path, "atoms", unit))
    if not overwrite:
        existing = [str(p) for p, _, _ in plan if p.exists()]
        if existing:
            raise ValueError(f"{len(existing)} target file(s) exist, e.g. {existing[:3]}; pass "
                             "overwrite=True to replace them")

    for path, kind, payload in tqdm(plan, desc="writing 2DMD", unit="file",
                                    disable=not progress):
        path.parent.mkdir(parents=True, exist_ok=True)
        if kind == "csv":
            write_splits(path, payload)
        else:
            write(path, bare(payload.copy()), format="cif")
    logger.info("wrote %d pairs (%d files) to %s", len(pairs), len(plan), root)
    return folders
