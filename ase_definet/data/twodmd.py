"""Read and write the folder layout of the 2DMD DFT data set (DefiNet paper, Zenodo 14027373).

Layout read by :func:`read_2dmd` / :func:`iter_2dmd` (``root`` is the folder that holds the
material folders of *one* density)::

    root/
        MoS2.cif  WSe2.cif  BN.cif  GaSe.cif  InSe.cif  P.cif   unit cells (2DMD names)
        MoS2/                                 one folder per material
            CIF/{id}_unrelaxed.cif            high density: ``CIF/``
            CIF/{id}_relaxed.cif              low density:  ``CIF_POSCAR/``
            train.csv  val.csv  test.csv      column ``atoms_id`` (other columns ignored)

What is accepted, exactly:

* **Material folders**: a sub-folder of ``root`` whose name, case-insensitively, equals a
  name of the material or starts with that name followed by ``_`` (``MoS2``, ``MoS2_500``,
  ``hBN``, ``BN``, ``hBN_spin_500``, ``BP``, ``P``, ``BP_spin_500``, ...). Names map to
  ours by :data:`MATERIAL_ALIASES` (``BN`` -> ``hBN``, ``P`` -> ``BP``); a folder of an
  unknown material is used under its own name. Two folders for one material are an error.
* **Structure folder**: ``CIF/`` for ``density="high"`` and ``CIF_POSCAR/`` for
  ``density="low"``; when the preferred one is missing the other is used.
* **Structure files** in it, for every structure id (case-insensitive extension):
  ``{id}_unrelaxed.cif`` / ``{id}_relaxed.cif``, ``{id}_unrelaxed.vasp`` /
  ``{id}_relaxed.vasp``, ``{id}_unrelaxed.poscar`` / ``{id}_relaxed.poscar`` (VASP
  POSCAR format), or ``POSCAR_{id}_unrelaxed`` / ``POSCAR_{id}_relaxed``. If one id has
  files of several kinds, the first in that order is used. Other files are ignored.
* **Splits**: ``train.csv``, ``val.csv``, ``test.csv`` in the material folder, each with a
  column ``atoms_id``; missing csv files are allowed. Ids in no csv file get split
  ``"unassigned"``; an id listed in a csv file without structure files is an error.
* **Unit cells**: ``{name}.cif`` for the 2DMD name (:data:`UNIT_CELL_FILES`) or any alias
  of the material (case-insensitive), looked for in ``root`` and then in ``root``'s parent
  (so ``read_2dmd(root / "low_density", density="low")`` finds cells in ``root``).
  ``unit_cells={"MoS2": atoms, ...}`` overrides the files.

Labelling: the ideal supercell is the unit cell repeated by the integer matrix that maps
its cell onto the structure's cell (diagonal -> :meth:`ase.Atoms.repeat`, so 8x8x1 MoS2
has the site order of :meth:`ase_definet.data.hosts.Host.pristine`; site labels follow the
atom order and positions of the unit-cell file), scaled onto the structure's cell. The
unrelaxed structure is matched to it with :func:`ase_definet.matching.match_to_host`.
For unit cells whose origin differs from the supercells': if that fails, rigid
translations that bring the first atom onto a site of the unit cell are tried; and if
every atom sits off its site by one common vector (more than 1e-3 Å), the pristine is
translated onto the atoms. The translation found is tried first for the next structures.
The unrelaxed atoms are put in host order at ``pristine site + offset`` (the same periodic
image as the pristine). The relaxed atoms are taken in the unrelaxed file's order when
count and species agree and no atom moved more than ``tolerance``; otherwise they are
matched to the unrelaxed atoms (same species, minimum-image distance, optimal
assignment) -- and when that fails too, an order with the same species is kept (logged);
other counts or elements are an error.

Structures are read in ASE's standard cell orientation (``a`` along x, ``b`` in the xy
plane, as a CIF file stores cell parameters only): POSCAR structures are rotated to it.
"""

from __future__ import annotations

import csv
import logging
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from ase import Atoms
from ase.build import make_supercell
from ase.geometry import cellpar_to_cell
from ase.io import read, write
from scipy.optimize import linear_sum_assignment
from tqdm import tqdm

from ..matching import Match, match_to_host
from .hosts import BUILTIN_DEFECTS, get_host, host_names
from .store import Pair

logger = logging.getLogger(__name__)

__all__ = ["MATERIAL_ALIASES", "UNIT_CELL_FILES", "STRUCTURE_DIRS", "SPLITS", "UNASSIGNED",
           "canonical_material", "find_material_folders", "read_2dmd", "iter_2dmd",
           "write_2dmd", "ideal_supercell"]

#: Our material name -> names it may have in the 2DMD files (ours first).
MATERIAL_ALIASES: dict[str, tuple[str, ...]] = {
    "MoS2": ("MoS2",), "WSe2": ("WSe2",), "hBN": ("hBN", "BN"), "GaSe": ("GaSe",),
    "InSe": ("InSe",), "BP": ("BP", "P"),
}
#: Our material name -> file name of its unit cell in the 2DMD layout.
UNIT_CELL_FILES: dict[str, str] = {name: d["cif"] for name, d in BUILTIN_DEFECTS.items()}
#: Density -> name of the structure sub-folder.
STRUCTURE_DIRS: dict[str, str] = {"high": "CIF", "low": "CIF_POSCAR"}
SPLITS: tuple[str, ...] = ("train", "val", "test")
UNASSIGNED = "unassigned"
SOURCE = "2DMD"

# (regex, ase format) in order of preference; group "id" and "kind".
_FILE_PATTERNS: tuple[tuple[re.Pattern, str], ...] = (
    (re.compile(r"^(?P<id>.+)_(?P<kind>unrelaxed|relaxed)\.cif$", re.IGNORECASE), "cif"),
    (re.compile(r"^(?P<id>.+)_(?P<kind>unrelaxed|relaxed)\.vasp$", re.IGNORECASE), "vasp"),
    (re.compile(r"^(?P<id>.+)_(?P<kind>unrelaxed|relaxed)\.poscar$", re.IGNORECASE), "vasp"),
    (re.compile(r"^POSCAR_(?P<id>.+)_(?P<kind>unrelaxed|relaxed)$"), "vasp"),
)
_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+=-]*$")
_CELL_RTOL = 1e-3  # relative cell mismatch allowed between unrelaxed and relaxed (as matching)
_RIGID_ATOL = 1e-3  # Å: offsets this equal (and larger) are a rigid translation of the sites
_REPEAT_ATOL = 1e-2  # allowed deviation of the cell repetition matrix from integers


# ----------------------------------------------------------------------------- names
def canonical_material(name: str) -> str:
    """Our material name for ``name`` (an alias such as ``"BN"``, case-insensitive);
    unknown names are returned unchanged."""
    low = name.lower()
    for ours, aliases in MATERIAL_ALIASES.items():
        if any(low == a.lower() for a in aliases):
            return ours
    return name


def _aliases(material: str) -> tuple[str, ...]:
    return MATERIAL_ALIASES.get(material, (material,))


def _folder_matches(folder_name: str, material: str) -> bool:
    low = folder_name.lower()
    return any(low == a.lower() or low.startswith(a.lower() + "_") for a in _aliases(material))


def _folder_material(folder_name: str) -> str:
    """Material of a folder: an alias match (exact beats prefix), else the folder name."""
    for exact in (True, False):
        for ours, aliases in MATERIAL_ALIASES.items():
            for a in aliases:
                if folder_name.lower() == a.lower() if exact else \
                        folder_name.lower().startswith(a.lower() + "_"):
                    return ours
    return folder_name


def _structure_dir(folder: Path, density: str) -> Path | None:
    preferred = STRUCTURE_DIRS[density]
    other = STRUCTURE_DIRS["low" if density == "high" else "high"]
    for name in (preferred, other):
        if (folder / name).is_dir():
            if name != preferred:
                logger.info("%s has no %s/ folder; using %s/", folder, preferred, name)
            return folder / name
    return None


def _check_density(density: str) -> None:
    if density not in STRUCTURE_DIRS:
        raise ValueError(f"density must be 'high' or 'low', got {density!r}")


def find_material_folders(root: str | Path, density: str = "high",
                          material: str | None = None) -> dict[str, Path]:
    """Material folders under ``root``: our material name -> folder.

    With ``material`` given (ours or an alias), exactly one matching folder must exist.
    Without, every sub-folder that has a ``CIF/`` or ``CIF_POSCAR/`` folder is returned.

    Raises:
        ValueError: ``root`` missing, no/ambiguous folder for ``material``, no material
            folder at all, or two folders for one material.
    """
    _check_density(density)
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"2DMD root folder {str(root)!r} does not exist")
    subdirs = sorted(p for p in root.iterdir() if p.is_dir())
    if material is not None:
        ours = canonical_material(material)
        hits = [p for p in subdirs if _folder_matches(p.name, ours)]
        names = " or ".join(f"{a!r}/{a + '_*'!r}" for a in _aliases(ours))
        if not hits:
            raise ValueError(f"no folder for material {material!r} in {str(root)!r} (looked for "
                             f"{names}; found {[p.name for p in subdirs]})")
        if len(hits) > 1:
            raise ValueError(f"several folders for material {material!r} in {str(root)!r}: "
                             f"{[p.name for p in hits]}; keep only one")
        if _structure_dir(hits[0], density) is None:
            raise ValueError(f"material folder {str(hits[0])!r} has no "
                             f"{STRUCTURE_DIRS[density]}/ folder")
        return {ours: hits[0]}
    found: dict[str, Path] = {}
    for p in subdirs:
        if _structure_dir(p, density) is None:
            continue
        name = _folder_material(p.name)
        if name in found:
            raise ValueError(f"several folders for material {name!r} in {str(root)!r}: "
                             f"{found[name].name!r} and {p.name!r}; pass material= or keep one")
        found[name] = p
    if not found:
        raise ValueError(f"no 2DMD material folder (a folder with a {STRUCTURE_DIRS[density]}/ "
                         f"folder) in {str(root)!r}")
    return found


# ----------------------------------------------------------------------------- reading
def _standard_orientation(atoms: Atoms) -> Atoms:
    """``atoms`` rotated to ASE's standard cell orientation (fractional coords kept)."""
    atoms.pbc = True
    std = cellpar_to_cell(atoms.cell.cellpar())
    if not np.allclose(std, atoms.cell[:], atol=1e-8):
        atoms.set_cell(std, scale_atoms=True)
    return atoms


def _read_structure(path: Path, fmt: str) -> Atoms:
    try:
        atoms = read(path, format=fmt)
    except Exception as err:  # ASE raises many kinds
        raise ValueError(f"cannot read structure file {str(path)!r}: {err}") from err
    if not isinstance(atoms, Atoms) or atoms.cell.rank != 3:
        raise ValueError(f"structure file {str(path)!r} has no 3D cell")
    atoms.calc = None
    atoms.info = {}
    return _standard_orientation(atoms)


def _find_unit_cell(material: str, dirs: Iterable[Path]) -> Path:
    names = [UNIT_CELL_FILES[material]] if material in UNIT_CELL_FILES else []
    names += [f"{a}.cif" for a in _aliases(material)]
    wanted = [n.lower() for n in dict.fromkeys(names)]
    dirs = list(dict.fromkeys(dirs))
    for d in dirs:
        if not d.is_dir():
            continue
        files = {p.name.lower(): p for p in d.iterdir() if p.is_file()}
        for n in wanted:
            if n in files:
                return files[n]
    raise ValueError(f"missing unit cell of {material!r}: none of {list(dict.fromkeys(names))} "
                     f"in {[str(d) for d in dirs]} (or pass unit_cells={{{material!r}: atoms}})")


def _read_splits(folder: Path) -> dict[str, str]:
    """atoms_id -> split from ``train.csv``/``val.csv``/``test.csv`` in ``folder``."""
    split_of: dict[str, str] = {}
    n_files = 0
    for split in SPLITS:
        path = folder / f"{split}.csv"
        if not path.is_file():
            continue
        n_files += 1
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            fields = [(c or "").strip() for c in (reader.fieldnames or [])]
            if "atoms_id" not in fields:
                raise ValueError(f"split file {str(path)!r} has no 'atoms_id' column "
                                 f"(columns: {fields})")
            key = (reader.fieldnames or [])[fields.index("atoms_id")]
            for row in reader:
                aid = (row.get(key) or "").strip()
                if not aid:
                    continue
                if aid in split_of and split_of[aid] != split:
                    raise ValueError(f"atoms_id {aid!r} is in both {split_of[aid]}.csv and "
                                     f"{split}.csv of {str(folder)!r}")
                split_of[aid] = split
    if n_files == 0:
        logger.warning("%s has no train.csv/val.csv/test.csv; every structure is 'unassigned'",
                       folder)
    return split_of


def _index_structures(struct_dir: Path) -> dict[str, dict[str, tuple[Path, str]]]:
    """id -> {"unrelaxed"/"relaxed": (path, ase format)}, by the accepted file names."""
    index: dict[str, dict[str, tuple[Path, str, int]]] = {}
    for p in struct_dir.iterdir():
        if not p.is_file():
            continue
        for rank, (pattern, fmt) in enumerate(_FILE_PATTERNS):
            m = pattern.match(p.name)
            if m:
                kind = m.group("kind").lower()
                slot = index.setdefault(m.group("id"), {})
                if kind not in slot or rank < slot[kind][2]:
                    slot[kind] = (p, fmt, rank)
                break
    return {i: {k: (v[0], v[1]) for k, v in d.items()} for i, d in index.items()}


def _repetition(unit_cell: Atoms, cell: np.ndarray) -> np.ndarray:
    """Integer (3, 3) matrix R with ``cell ~= R @ unit_cell.cell``; ``ValueError`` if none."""
    reps = np.asarray(cell, dtype=float) @ np.linalg.inv(unit_cell.cell[:])
    rounded = np.round(reps)
    if not np.allclose(reps, rounded, atol=_REPEAT_ATOL) or round(np.linalg.det(rounded)) < 1:
        raise ValueError(
            f"the cell {np.round(cell, 4).tolist()} is not an integer supercell of the unit cell "
            f"{np.round(unit_cell.cell[:], 4).tolist()} (repetition {np.round(reps, 3).tolist()})")
    return rounded


def ideal_supercell(unit_cell: Atoms, cell: np.ndarray) -> Atoms:
    """The ideal supercell of ``unit_cell`` with lattice ``cell`` (3, 3) Å.

    The repetition matrix ``cell @ inv(unit_cell.cell)`` must be integer (to
    ``1e-2``); a diagonal one uses :meth:`ase.Atoms.repeat` (the site order of
    :meth:`Host.pristine`), others :func:`ase.build.make_supercell`. The result is
    scaled onto ``cell`` exactly (fractional coordinates kept), pbc True.

    Raises:
        ValueError: the cell is not an integer supercell of the unit cell.
    """
    cell = np.asarray(cell, dtype=float)
    rounded = _repetition(unit_cell, cell)
    if np.array_equal(rounded, np.diag(np.diag(rounded))):
        sc = unit_cell.repeat(tuple(int(r) for r in np.diag(rounded)))
    else:
        sc = make_supercell(unit_cell, rounded.astype(int))
    sc.set_cell(cell, scale_atoms=True)
    sc.pbc = True
    sc.calc = None
    return sc


def _mic(delta: np.ndarray, cell: np.ndarray) -> np.ndarray:
    frac = delta @ np.linalg.inv(cell)
    frac -= np.round(frac)
    return frac @ cell


def _shifted(pristine: Atoms, shift: np.ndarray) -> Atoms:
    out = pristine.copy()
    out.positions += shift
    return out


def _match_with_shift(unrelaxed: Atoms, pristine: Atoms, unit_cell: Atoms, tolerance: float,
                      hint: np.ndarray | None) -> tuple[Match, Atoms, np.ndarray]:
    """Match directly (or with the shift ``hint``); else search rigid translations.

    The candidates bring the first atom onto each site of the first unit cell, reduced to
    their shortest form modulo the unit-cell lattice (which maps the site set onto
    itself); the one with the fewest substitutions, then the shortest, wins.

    Returns (match, the pristine it refers to, the translation applied to it in Å).
    """
    first_err: ValueError | None = None
    tries = [np.zeros(3)] if hint is None else [hint, np.zeros(3)]
    for shift in tries:
        p = pristine if not shift.any() else _shifted(pristine, shift)
        try:
            return match_to_host(unrelaxed, p, tolerance), p, shift
        except ValueError as err:
            first_err = first_err or err
    if len(unrelaxed) > len(pristine):
        raise first_err
    cell = pristine.cell[:]
    unit_lattice = np.linalg.solve(_repetition(unit_cell, cell), cell)
    best = None
    unit_sites = unit_cell.get_scaled_positions(wrap=False) @ unit_lattice
    for site in unit_sites:
        shift = _mic(unrelaxed.positions[0] - site, unit_lattice)
        p = _shifted(pristine, shift)
        try:
            m = match_to_host(unrelaxed, p, tolerance)
        except ValueError:
            continue
        score = (len(m.spec.substitutions), round(float(np.linalg.norm(shift)), 6))
        if best is None or score < best[0]:
            best = (score, m, p, shift)
    if best is None:
        raise first_err
    return best[1], best[2], best[3]


def _relaxed_order(unrelaxed: Atoms, relaxed: Atoms, tolerance: float, path: Path) -> np.ndarray:
    """Index into ``relaxed`` of the atom that corresponds to each atom of ``unrelaxed``."""
    n = len(unrelaxed)
    if len(relaxed) != n:
        raise ValueError(f"relaxed structure {str(path)!r} has {len(relaxed)} atoms, the "
                         f"unrelaxed one {n}")
    cell = unrelaxed.cell[:]
    if not np.allclose(relaxed.cell[:], cell, atol=_CELL_RTOL * max(unrelaxed.cell.lengths())):
        raise ValueError(f"relaxed structure {str(path)!r} has another cell "
                         f"({relaxed.cell.cellpar().round(3).tolist()}) than the unrelaxed one "
                         f"({unrelaxed.cell.cellpar().round(3).tolist()})")
    same_species = np.array_equal(relaxed.numbers, unrelaxed.numbers)
    ident = np.arange(n)
    if same_species:
        d = np.linalg.norm(_mic(relaxed.positions - unrelaxed.positions, cell), axis=1)
        if d.max() <= tolerance:
            return ident
    if sorted(relaxed.numbers) != sorted(unrelaxed.numbers):
        raise ValueError(f"relaxed structure {str(path)!r} has other elements "
                         f"({relaxed.get_chemical_formula()}) than the unrelaxed one "
                         f"({unrelaxed.get_chemical_formula()})")
    dist = np.linalg.norm(_mic(unrelaxed.positions[:, None] - relaxed.positions[None], cell),
                          axis=2)
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
    material: str
    density: str
    folder: Path
    struct_dir: Path
    unit_cell: Atoms
    tolerance: float
    shift: np.ndarray | None = None
    _pristine_cache: dict | None = None

    def pristine_for(self, cell: np.ndarray) -> Atoms:
        if self._pristine_cache is None:
            self._pristine_cache = {}
        key = tuple(np.round(cell, 6).ravel().tolist())
        if key not in self._pristine_cache:
            p = ideal_supercell(self.unit_cell, cell)
            p.info = {"material": self.material}
            self._pristine_cache[key] = p
        return self._pristine_cache[key]

    def pair(self, atoms_id: str, files: Mapping[str, tuple[Path, str]], split: str) -> Pair:
        upath, ufmt = files["unrelaxed"]
        rpath, rfmt = files["relaxed"]
        unrelaxed = _read_structure(upath, ufmt)
        relaxed = _read_structure(rpath, rfmt)
        try:
            pristine = self.pristine_for(unrelaxed.cell[:])
            match, pristine, shift = _match_with_shift(
                unrelaxed, pristine, self.unit_cell, self.tolerance, self.shift)
        except ValueError as err:
            raise ValueError(f"unmatched structure {str(upath)!r} ({self.material} "
                             f"unit cell): {err}") from None
        # every atom off its site by one common vector: the unit cell's origin differs
        common = match.offsets.mean(axis=0)
        if np.linalg.norm(common) > _RIGID_ATOL and \
                np.abs(match.offsets - common).max() < _RIGID_ATOL:
            pristine = _shifted(pristine, common)
            shift = shift + common
            match = Match(match.spec, match.site_index, match.offsets - common)
        if shift.any() and (self.shift is None or not np.allclose(shift, self.shift)):
            logger.info("%s %s: the unit cell's sites are translated by %s A to match %s",
                        self.material, self.density, np.round(shift, 4).tolist(), upath.name)
            self.shift = shift
        rorder = _relaxed_order(unrelaxed, relaxed, self.tolerance, rpath)
        order = np.argsort(match.site_index, kind="stable")
        sites = match.site_index[order]
        if not np.array_equal(sites, match.spec.site_index(len(pristine))):  # pragma: no cover
            raise ValueError(f"{str(upath)!r}: site order does not follow the host convention")
        cell = pristine.cell[:]
        pos = pristine.positions[sites] + match.offsets[order]
        ours = Atoms(numbers=unrelaxed.numbers[order], positions=pos, cell=cell, pbc=True)
        rel = relaxed.positions[rorder][order]
        relaxed_positions = pos + _mic(rel - pos, cell)
        info = {"material": self.material, "density": self.density, "split": split,
                "atoms_id": atoms_id, "source": SOURCE, "n_defects": match.spec.n_defects}
        return Pair(unrelaxed=ours, relaxed_positions=relaxed_positions,
                    pristine=pristine.copy(), spec=match.spec, info=info)


def iter_2dmd(root: str | Path, material: str | None = None, density: str = "high",
              tolerance: float = 1.0, *, unit_cells: Mapping[str, Atoms] | None = None,
              errors: str = "raise", progress: bool = True) -> Iterator[Pair]:
    """Yield the (unrelaxed, relaxed) pairs of a 2DMD folder layout (see module doc).

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
            or an unmatched structure (the message names the file).
    """
    _check_density(density)
    if errors not in ("raise", "skip"):
        raise ValueError(f"errors must be 'raise' or 'skip', got {errors!r}")
    if tolerance <= 0:
        raise ValueError(f"tolerance must be positive, got {tolerance}")
    root = Path(root)
    folders = find_material_folders(root, density, material)
    given = {canonical_material(k): v for k, v in (unit_cells or {}).items()}
    readers = []
    for name, folder in folders.items():
        if name in given:
            unit = _standard_orientation(given[name].copy())
        else:
            path = _find_unit_cell(name, [root, root.parent])
            unit = _read_structure(path, "cif")
            logger.debug("%s: unit cell %s", name, path)
        struct_dir = _structure_dir(folder, density)
        assert struct_dir is not None
        splits = _read_splits(folder)
        index = _index_structures(struct_dir)
        missing = sorted(set(splits) - set(index))
        if missing:
            aid = missing[0]
            raise ValueError(f"atoms_id {aid!r} of {splits[aid]}.csv in {str(folder)!r} has no "
                             f"structure files in {str(struct_dir)!r} ({len(missing)} such ids)")
        readers.append((_MaterialReader(name, density, folder, struct_dir, unit, tolerance),
                        index, splits))
    return _iterate(readers, errors, progress)


def _iterate(readers, errors: str, progress: bool) -> Iterator[Pair]:
    for reader, index, splits in readers:
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


# ----------------------------------------------------------------------------- writing
def _unit_cell_file(material: str) -> str:
    return UNIT_CELL_FILES.get(material, f"{material}.cif")


def _same_structure(a: Atoms, b: Atoms, atol: float = 1e-4) -> bool:
    if len(a) != len(b) or not np.array_equal(a.numbers, b.numbers):
        return False
    if not np.allclose(a.cell.cellpar(), b.cell.cellpar(), atol=atol):
        return False
    d = a.get_scaled_positions(wrap=False) - b.get_scaled_positions(wrap=False)
    return bool(np.allclose(d - np.round(d), 0.0, atol=atol / max(a.cell.lengths())))


def _check_pair(pair: Pair, unit: Atoms, k: int) -> None:
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
    ok = len(ideal) == n_sites and np.array_equal(ideal.numbers, pair.pristine.numbers)
    if ok:
        d = _mic(pair.pristine.positions - ideal.positions, ideal.cell[:])
        ok = bool(np.abs(_mic(d - d[0], ideal.cell[:])).max() < 1e-3)
    if not ok:
        raise ValueError(f"pair {aid!r}: its pristine is not the ideal supercell of the "
                         f"{pair.info['material']!r} unit cell in the same site order (pass the "
                         "unit cell it was built from in unit_cells)")


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
            ``ase_definet.data.hosts.get_host(name).unit_cell`` for registered hosts.
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
    given = {canonical_material(k): v for k, v in (unit_cells or {}).items()}
    groups: dict[tuple[str, str], list[tuple[str, str, Pair]]] = {}
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
        if not _ID_RE.match(aid):
            raise ValueError(f"pair {k}: atoms_id {aid!r} is not a safe file name (letters, "
                             "digits and . _ + = -, not starting with . _ + = -)")
        group.append((aid, split, pair))

    units: dict[str, Atoms] = {}
    for material in sorted({m for m, _ in groups}):
        if material in given:
            units[material] = given[material]
        elif material in host_names():
            units[material] = get_host(material).unit_cell
        else:
            raise ValueError(f"missing unit cell of {material!r}: it is not a registered "
                             f"host; pass unit_cells={{{material!r}: atoms}}")

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
        if any(not np.allclose(cellpar_to_cell(p.unrelaxed.cell.cellpar()), p.unrelaxed.cell[:],
                               atol=1e-6) for _, _, p in group):
            logger.warning("%s %s: cells are not in ASE's standard orientation; they are read "
                           "back rotated (fractional coordinates are kept)", material, density)
    for material, unit in units.items():
        path = root / _unit_cell_file(material)
        if path.is_file() and not overwrite:
            try:
                same = _same_structure(_read_structure(path, "cif"), _standard_orientation(
                    unit.copy()))
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
            with open(path, "w", newline="") as f:
                w = csv.writer(f)
                w.writerow(["atoms_id"])
                w.writerows([a] for a in payload)
        else:
            atoms = payload.copy()
            atoms.calc = None
            atoms.info = {}
            atoms.pbc = True
            write(path, atoms, format="cif")
    logger.info("wrote %d pairs (%d files) to %s", len(pairs), len(plan), root)
    return folders
