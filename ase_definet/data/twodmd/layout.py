"""Names and files of the 2DMD folder layout: material names and their aliases, material
and structure folders, structure and unit-cell files, and the split csv files.

Everything here only finds, names and reads files; labelling the structures is
:mod:`.supercell` and :mod:`.read`.
"""

from __future__ import annotations

import csv
import logging
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TypeVar

import numpy as np
from ase import Atoms
from ase.cell import Cell
from ase.geometry import cellpar_to_cell
from ase.io import read

from ...core.hosts import BUILTIN_DEFECTS

logger = logging.getLogger(__name__)

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
FILE_PATTERNS: tuple[tuple[re.Pattern, str], ...] = (
    (re.compile(r"^(?P<id>.+)_(?P<kind>unrelaxed|relaxed)\.cif$", re.IGNORECASE), "cif"),
    (re.compile(r"^(?P<id>.+)_(?P<kind>unrelaxed|relaxed)\.vasp$", re.IGNORECASE), "vasp"),
    (re.compile(r"^(?P<id>.+)_(?P<kind>unrelaxed|relaxed)\.poscar$", re.IGNORECASE), "vasp"),
    (re.compile(r"^POSCAR_(?P<id>.+)_(?P<kind>unrelaxed|relaxed)$"), "vasp"),
)
#: An atoms_id that is safe as (part of) a file name.
ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+=-]*$")

_V = TypeVar("_V")


# ----------------------------------------------------------------------------- names
def canonical_material(name: str) -> str:
    """Our material name for ``name`` (an alias such as ``"BN"``, case-insensitive);
    unknown names are returned unchanged."""
    low = name.lower()
    for ours, aliases in MATERIAL_ALIASES.items():
        if any(low == a.lower() for a in aliases):
            return ours
    return name


def canonical_keys(by_material: Mapping[str, _V] | None) -> dict[str, _V]:
    """``by_material`` (e.g. ``unit_cells=``) keyed by our material names."""
    return {canonical_material(k): v for k, v in (by_material or {}).items()}


def aliases(material: str) -> tuple[str, ...]:
    """The names ``material`` (ours) may have in the 2DMD files."""
    return MATERIAL_ALIASES.get(material, (material,))


def _names_folder(alias: str, folder_name: str, exact: bool) -> bool:
    """``folder_name`` is ``alias`` (``exact``) or ``alias_...``, case-insensitively."""
    low, a = folder_name.lower(), alias.lower()
    return low == a if exact else low.startswith(a + "_")


def _folder_matches(folder_name: str, material: str) -> bool:
    return any(_names_folder(a, folder_name, exact)
               for a in aliases(material) for exact in (True, False))


def _folder_material(folder_name: str) -> str:
    """Material of a folder: an alias match (exact beats prefix), else the folder name."""
    for exact in (True, False):
        for ours, names in MATERIAL_ALIASES.items():
            if any(_names_folder(a, folder_name, exact) for a in names):
                return ours
    return folder_name


# ----------------------------------------------------------------------------- folders
def check_density(density: str) -> None:
    """``ValueError`` unless ``density`` is ``"high"`` or ``"low"``."""
    if density not in STRUCTURE_DIRS:
        raise ValueError(f"density must be 'high' or 'low', got {density!r}")


def structure_dir(folder: Path, density: str) -> Path | None:
    """The structure folder of a material folder: the one of ``density``, else the other
    one (logged), else ``None``."""
    preferred = STRUCTURE_DIRS[density]
    other = STRUCTURE_DIRS["low" if density == "high" else "high"]
    for name in (preferred, other):
        if (folder / name).is_dir():
            if name != preferred:
                logger.info("%s has no %s/ folder; using %s/", folder, preferred, name)
            return folder / name
    return None


def find_material_folders(root: str | Path, density: str = "high",
                          material: str | None = None) -> dict[str, Path]:
    """Material folders under ``root``: our material name -> folder.

    With ``material`` given (ours or an alias), exactly one matching folder must exist.
    Without, every sub-folder that has a ``CIF/`` or ``CIF_POSCAR/`` folder is returned.

    Raises:
        ValueError: ``root`` missing, no/ambiguous folder for ``material``, no material
            folder at all, or two folders for one material.
    """
    check_density(density)
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"2DMD root folder {str(root)!r} does not exist")
    subdirs = sorted(p for p in root.iterdir() if p.is_dir())
    if material is not None:
        ours = canonical_material(material)
        hits = [p for p in subdirs if _folder_matches(p.name, ours)]
        names = " or ".join(f"{a!r}/{a + '_*'!r}" for a in aliases(ours))
        if not hits:
            raise ValueError(f"no folder for material {material!r} in {str(root)!r} (looked for "
                             f"{names}; found {[p.name for p in subdirs]})")
        if len(hits) > 1:
            raise ValueError(f"several folders for material {material!r} in {str(root)!r}: "
                             f"{[p.name for p in hits]}; keep only one")
        if structure_dir(hits[0], density) is None:
            raise ValueError(f"material folder {str(hits[0])!r} has no "
                             f"{STRUCTURE_DIRS[density]}/ folder")
        return {ours: hits[0]}
    found: dict[str, Path] = {}
    for p in subdirs:
        if structure_dir(p, density) is None:
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


def index_structures(struct_dir: Path) -> dict[str, dict[str, tuple[Path, str]]]:
    """id -> {"unrelaxed"/"relaxed": (path, ase format)}, by the accepted file names
    (:data:`FILE_PATTERNS`, the first kind that matches wins)."""
    index: dict[str, dict[str, tuple[Path, str, int]]] = {}
    for p in struct_dir.iterdir():
        if not p.is_file():
            continue
        for rank, (pattern, fmt) in enumerate(FILE_PATTERNS):
            m = pattern.match(p.name)
            if m:
                kind = m.group("kind").lower()
                slot = index.setdefault(m.group("id"), {})
                if kind not in slot or rank < slot[kind][2]:
                    slot[kind] = (p, fmt, rank)
                break
    return {i: {k: (v[0], v[1]) for k, v in d.items()} for i, d in index.items()}


# ----------------------------------------------------------------------------- unit cells
def unit_cell_file(material: str) -> str:
    """File name of ``material``'s unit cell as written: its 2DMD name, else
    ``{material}.cif``."""
    return UNIT_CELL_FILES.get(material, f"{material}.cif")


def find_unit_cell(material: str, dirs: Iterable[Path]) -> Path:
    """The unit-cell CIF of ``material`` in the first of ``dirs`` that has one (2DMD name
    or any alias, case-insensitive).

    Raises:
        ValueError: none of the names in any of ``dirs``.
    """
    names = [UNIT_CELL_FILES[material]] if material in UNIT_CELL_FILES else []
    names += [f"{a}.cif" for a in aliases(material)]
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


# ----------------------------------------------------------------------------- splits
def read_splits(folder: Path) -> dict[str, str]:
    """atoms_id -> split from ``train.csv``/``val.csv``/``test.csv`` in ``folder``.

    Raises:
        ValueError: a csv file without an ``atoms_id`` column, or an id in two files.
    """
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


def write_splits(path: Path, atoms_ids: Iterable[str]) -> None:
    """Write one split csv file: a column ``atoms_id``, one id a row."""
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["atoms_id"])
        w.writerows([a] for a in atoms_ids)


# ----------------------------------------------------------------------------- structures
def bare(atoms: Atoms) -> Atoms:
    """``atoms`` itself with no calculator, empty info and pbc True (as the layout stores
    them)."""
    atoms.calc = None
    atoms.info = {}
    atoms.pbc = True
    return atoms


def in_standard_orientation(cell: Cell, atol: float = 1e-8) -> bool:
    """Whether ``cell`` is in ASE's standard orientation (``a`` along x, ``b`` in the xy
    plane), to ``atol`` Å."""
    return bool(np.allclose(cellpar_to_cell(cell.cellpar()), cell[:], atol=atol))


def standard_orientation(atoms: Atoms) -> Atoms:
    """``atoms`` (modified, pbc True) rotated to ASE's standard cell orientation
    (fractional coordinates kept)."""
    atoms.pbc = True
    if not in_standard_orientation(atoms.cell):
        atoms.set_cell(cellpar_to_cell(atoms.cell.cellpar()), scale_atoms=True)
    return atoms


def read_structure(path: Path, fmt: str) -> Atoms:
    """A structure file as bare Atoms in ASE's standard cell orientation.

    Raises:
        ValueError: the file cannot be read or has no 3D cell.
    """
    try:
        atoms = read(path, format=fmt)
    except Exception as err:  # ASE raises many kinds
        raise ValueError(f"cannot read structure file {str(path)!r}: {err}") from err
    if not isinstance(atoms, Atoms) or atoms.cell.rank != 3:
        raise ValueError(f"structure file {str(path)!r} has no 3D cell")
    return standard_orientation(bare(atoms))
