"""Ideal supercells of a unit cell, and matching a structure to one up to a rigid shift.

A 2DMD unit-cell file may place its sites at another origin than the supercells it was
repeated into; :func:`match_with_shift` and :func:`absorb_rigid_offset` find the rigid
translation of the ideal supercell that the structures sit on.
"""

from __future__ import annotations

import numpy as np
from ase import Atoms
from ase.build import make_supercell
from ase.geometry import find_mic

from ...core.matching import Match, match_to_host

_RIGID_ATOL = 1e-3  # Å: offsets this equal (and larger) are a rigid translation of the sites
_REPEAT_ATOL = 1e-2  # allowed deviation of the cell repetition matrix from integers


def repetition(unit_cell: Atoms, cell: np.ndarray) -> np.ndarray:
    """Integer (3, 3) matrix R (float dtype) with ``cell ~= R @ unit_cell.cell``.

    Raises:
        ValueError: ``cell`` (3, 3) Å is not an integer supercell of the unit cell (to
            ``1e-2`` in R) or R has no positive determinant.
    """
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
    rounded = repetition(unit_cell, cell)
    if np.array_equal(rounded, np.diag(np.diag(rounded))):
        sc = unit_cell.repeat(tuple(int(r) for r in np.diag(rounded)))
    else:
        sc = make_supercell(unit_cell, rounded.astype(int))
    sc.set_cell(cell, scale_atoms=True)
    sc.pbc = True
    sc.calc = None
    return sc


def shifted(pristine: Atoms, shift: np.ndarray) -> Atoms:
    """A copy of ``pristine`` translated by ``shift`` (3,) Å."""
    out = pristine.copy()
    out.positions += shift
    return out


def match_with_shift(unrelaxed: Atoms, pristine: Atoms, unit_cell: Atoms, tolerance: float,
                     hint: np.ndarray | None) -> tuple[Match, Atoms, np.ndarray]:
    """Match directly (or with the shift ``hint``, (3,) Å); else search rigid translations.

    The candidates bring the first atom onto each site of the first unit cell, reduced to
    their shortest form modulo the unit-cell lattice (which maps the site set onto
    itself); the one with the fewest substitutions, then the shortest, wins.

    Returns:
        (match, the pristine it refers to, the translation (3,) Å applied to it).

    Raises:
        ValueError: no translation matches (the error of the direct match).
    """
    first_err: ValueError | None = None
    tries = [np.zeros(3)] if hint is None else [hint, np.zeros(3)]
    for shift in tries:
        p = pristine if not shift.any() else shifted(pristine, shift)
        try:
            return match_to_host(unrelaxed, p, tolerance), p, shift
        except ValueError as err:
            first_err = first_err or err
    if len(unrelaxed) > len(pristine):
        raise first_err
    cell = pristine.cell[:]
    unit_lattice = np.linalg.solve(repetition(unit_cell, cell), cell)
    best = None
    unit_sites = unit_cell.get_scaled_positions(wrap=False) @ unit_lattice
    for site in unit_sites:
        shift, _ = find_mic(unrelaxed.positions[0] - site, unit_lattice, pbc=True)
        p = shifted(pristine, shift)
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


def absorb_rigid_offset(match: Match, pristine: Atoms,
                        shift: np.ndarray) -> tuple[Match, Atoms, np.ndarray]:
    """When every atom sits off its site by one common vector (longer than 1e-3 Å; the
    unit cell's origin differs), translate the pristine onto the atoms.

    Returns:
        (match, pristine, shift (3,) Å) with the common vector moved from the match's
        offsets into the pristine and the shift; the inputs unchanged otherwise.
    """
    common = match.offsets.mean(axis=0)
    if np.linalg.norm(common) > _RIGID_ATOL and \
            np.abs(match.offsets - common).max() < _RIGID_ATOL:
        return (Match(match.spec, match.site_index, match.offsets - common),
                shifted(pristine, common), shift + common)
    return match, pristine, shift


def is_rigid_translation(atoms: Atoms, ideal: Atoms, atol: float = 1e-3) -> bool:
    """Whether ``atoms`` is ``ideal`` (same numbers, same site order) translated as a
    whole, up to lattice vectors of ``ideal``'s cell, to ``atol`` Å."""
    if len(atoms) != len(ideal) or not np.array_equal(atoms.numbers, ideal.numbers):
        return False
    cell = ideal.cell[:]
    d, _ = find_mic(atoms.positions - ideal.positions, cell, pbc=True)
    spread, _ = find_mic(d - d[0], cell, pbc=True)
    return bool(np.abs(spread).max() < atol)
