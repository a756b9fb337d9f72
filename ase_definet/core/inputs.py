"""What users hand in, turned into a :class:`DefectStructure` and the Atoms the
prediction is written to; shared by :class:`DefiNetRelaxer` and :func:`relax_many` so
both give the same result for the same input.

pymatgen ``Structure`` objects are accepted wherever ``ase.Atoms`` are, converted with
pymatgen's own ``AseAtomsAdaptor`` (pymatgen is optional: only a user who has a
Structure needs it installed).
"""

from __future__ import annotations

import logging
from typing import Any

from ase import Atoms
from ase.data import atomic_masses

from .defects import SpecLike
from .matching import DEFAULT_TOLERANCE, describe
from .structure import DefectStructure

logger = logging.getLogger(__name__)


def is_pymatgen_structure(obj: Any) -> bool:
    """True for a pymatgen ``Structure``/``IStructure`` (without importing pymatgen)."""
    return (type(obj).__module__.startswith("pymatgen.") and hasattr(obj, "lattice")
            and hasattr(obj, "sites"))


def to_atoms(obj: Any, what: str = "atoms") -> Atoms:
    """``obj`` itself if it is an ``ase.Atoms``, a new Atoms for a pymatgen Structure
    (site properties become arrays, selective dynamics constraints), else ValueError."""
    if isinstance(obj, Atoms):
        return obj
    if is_pymatgen_structure(obj):
        from pymatgen.io.ase import AseAtomsAdaptor

        return AseAtomsAdaptor.get_atoms(obj)
    raise ValueError(f"{what} must be an ase.Atoms or a pymatgen Structure, got "
                     f"{type(obj).__name__}")


def like_input(atoms: Atoms, template: Any) -> Any:
    """``atoms`` as the type of ``template``: a new pymatgen Structure if the user passed
    one, else ``atoms`` itself."""
    if is_pymatgen_structure(template):
        from pymatgen.io.ase import AseAtomsAdaptor

        return AseAtomsAdaptor.get_structure(atoms, cls=type(template))
    return atoms


def prepare(atoms: Atoms, defects: SpecLike = None, pristine: Atoms | None = None,
            elements: list[int] | None = None, tolerance: float = DEFAULT_TOLERANCE,
            marker_free: bool = False) -> tuple[DefectStructure, Atoms]:
    """``(structure, target)`` for one relaxation (nothing is modified).

    ``target`` is the Atoms the relaxed positions go to: ``atoms`` itself when it is the
    defective structure (with ``pristine``, a detected host, or ``marker_free``), a new
    defective structure built from the host ``atoms`` with ``defects``.

    Raises:
        ValueError: see :class:`DefectStructure`; with neither ``defects`` nor
            ``pristine``, also when ``atoms`` fits no registered host (unless
            ``marker_free``).
    """
    if marker_free:
        if defects is not None or pristine is not None:
            raise ValueError("marker_free=True predicts without defects: give neither "
                             "defects= nor pristine= with it")
        return DefectStructure.from_host(atoms, None, elements), atoms
    if defects is None and pristine is None:
        return auto_structure(atoms, elements, tolerance), atoms
    structure = DefectStructure.from_atoms(atoms, defects, pristine, elements, tolerance)
    return structure, (atoms if defects is None else defective_from_host(atoms, structure))


def auto_structure(atoms: Atoms, elements: list[int] | None,
                   tolerance: float = DEFAULT_TOLERANCE) -> DefectStructure:
    """Neither defects nor pristine given: match ``atoms`` to a registered host."""
    from .hostmatch import find_host_match
    from .validate import check_atoms

    check_atoms(atoms)
    found = find_host_match(atoms, tolerance)
    if found is None:
        from .hosts import host_names

        raise ValueError(
            f"atoms ({atoms.get_chemical_formula()}) matches no built-in host "
            f"({', '.join(host_names())}) by composition and in-plane lattice; give "
            "pristine=HOST (the defective structure's pristine supercell), or the host as "
            "atoms with defects={...}, or marker_free=True (definet relax --marker-free) to "
            "predict with every atom "
            "marked pristine (vacancies invisible to the network)")
    host, pristine, match = found  # matched once, by the detection
    structure = DefectStructure.from_match(atoms, pristine, match, elements)
    logger.info("atoms matched the built-in host %s (%d sites): %s", host.name,
                len(pristine), describe(structure.spec, pristine))
    return structure


def defective_from_host(host: Atoms, structure: DefectStructure) -> Atoms:
    """A new defective Atoms from the caller's host: cell, pbc, info, per-atom arrays
    (tags, ...), constraints and calculator are kept; vacant sites removed."""
    idx = structure.spec.site_index(len(host))
    at = host[idx]  # copies info, arrays and re-indexes constraints
    numbers = structure.spec.site_numbers(host)[idx]
    changed = at.numbers != numbers
    at.numbers = numbers
    if "masses" in at.arrays:
        at.arrays["masses"][changed] = atomic_masses[numbers[changed]]
    at.calc = host.calc
    return at
