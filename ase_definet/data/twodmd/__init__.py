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
has the site order of :meth:`ase_definet.core.hosts.Host.pristine`; site labels follow the
atom order and positions of the unit-cell file), scaled onto the structure's cell. The
unrelaxed structure is matched to it with :func:`ase_definet.core.matching.match_to_host`.
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

Modules: :mod:`.layout` (material names and aliases, folders, structure, unit-cell and
split csv files), :mod:`.supercell` (repetition matrix, ideal supercell, matching with a
rigid shift), :mod:`.read` (:func:`read_2dmd`, :func:`iter_2dmd`) and :mod:`.write`
(:func:`write_2dmd`). The public API is what this package exports (``__all__``); the
modules' other names serve each other.
"""

from .layout import (
    MATERIAL_ALIASES,
    SOURCE,
    SPLITS,
    STRUCTURE_DIRS,
    UNASSIGNED,
    UNIT_CELL_FILES,
    canonical_material,
    find_material_folders,
)
from .read import iter_2dmd, read_2dmd
from .supercell import ideal_supercell
from .write import write_2dmd

__all__ = [
    "MATERIAL_ALIASES",
    "SOURCE",
    "SPLITS",
    "STRUCTURE_DIRS",
    "UNASSIGNED",
    "UNIT_CELL_FILES",
    "canonical_material",
    "find_material_folders",
    "ideal_supercell",
    "iter_2dmd",
    "read_2dmd",
    "write_2dmd",
]
