"""Recognise a registered host in a defective structure, whatever its origin and cell.

A defective layer is recognised by its in-plane lattice and composition: its first two
cell vectors must span a supercell of the host unit cell's lattice (any integer matrix:
any size, a non-diagonal supercell, an equivalent basis, any orientation in space), to
within ``strain`` in length and angle; the vacuum (third vector) may be anything. The
host's sites are then laid onto the user's lattice, rotated into its frame and shifted
to its origin, and the structure is matched to them (:func:`match_to_host`).
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

import numpy as np
from ase import Atoms

from .matching import DEFAULT_TOLERANCE, Match, match_to_host

if TYPE_CHECKING:
    from .hosts import Host

logger = logging.getLogger(__name__)

DEFAULT_STRAIN = 0.03  # relative lattice mismatch accepted (literature vs relaxed a, b)


def find_host(atoms: Atoms, tolerance: float = DEFAULT_TOLERANCE,
              strain: float = DEFAULT_STRAIN, hosts: Iterable[Host] | None = None
              ) -> tuple[Host, Atoms] | None:
    """``(host, pristine)`` of :func:`find_host_match`, or ``None``."""
    found = find_host_match(atoms, tolerance, strain, hosts)
    return None if found is None else found[:2]


def find_host_match(atoms: Atoms, tolerance: float = DEFAULT_TOLERANCE,
                    strain: float = DEFAULT_STRAIN, hosts: Iterable[Host] | None = None
                    ) -> tuple[Host, Atoms, Match] | None:
    """The registered host ``atoms`` is a defective supercell of, and that pristine
    supercell laid onto ``atoms``' cell, pbc and origin; ``None`` if none fits.

    Args:
        atoms: a defective layer; its third cell vector is the out-of-plane one.
        tolerance: largest displacement of an atom from its site, Å.
        strain: largest relative difference between the lattices (lengths and angle).
        hosts: the candidates (default: every registered host).

    Among several fits the one with the fewest substitutions, then the smallest
    displacements, wins. ``atoms`` is not modified.
    """
    if hosts is None:
        from .hosts import get_host, host_names

        hosts = [get_host(name) for name in host_names()]
    best: tuple[tuple[int, float], Host, Atoms, Match] | None = None
    for host in hosts:
        if not _composition_fits(atoms, host):
            continue
        for pristine in _candidate_pristines(atoms, host, strain):
            try:
                match = match_to_host(atoms, pristine, tolerance)
            except ValueError:
                continue
            score = _score(match)
            if best is None or score < best[0]:
                pristine.positions += match.translation  # onto the user's origin
                match = Match(match.spec, match.site_index, match.offsets - match.translation)
                best = (score, host, pristine, match)
            if score[1] < 0.1 * tolerance and score[0] <= len(atoms) // 4:
                break  # a close fit: another orientation of the lattice fits no better
        if best is not None and best[1] is host and best[0][1] < 0.1 * tolerance:
            break
    if best is None:
        return None
    _, host, pristine, match = best
    logger.debug("atoms fit the registered host %s (%d sites)", host.name, len(pristine))
    return host, pristine, match


def _score(match: Match) -> tuple[int, float]:
    residual = match.offsets - match.translation
    return len(match.spec.substitutions), float(np.sqrt((residual ** 2).sum(axis=1).mean()))


def _composition_fits(atoms: Atoms, host: Host) -> bool:
    """Most atoms are of the host's elements, the rest its allowed substituents."""
    own = set(host.unit_cell.get_chemical_symbols())
    allowed = own | {s for subs in host.substitutions.values() for s in subs}
    symbols = atoms.get_chemical_symbols()
    if not symbols or not set(symbols) <= allowed:
        return False
    return sum(s in own for s in symbols) > len(symbols) / 2


def _candidate_pristines(atoms: Atoms, host: Host, strain: float) -> Iterator[Atoms]:
    """Pristine supercells of ``host`` on ``atoms``' lattice, one per supercell matrix
    and origin candidate (an anchor atom put on each host site of its element)."""
    unit = host.unit_cell
    target = atoms.cell[:2]
    n_cells = _area(target) / _area(unit.cell[:2])
    if len(atoms) > round(n_cells) * len(unit) or round(n_cells) < 1:
        return
    for matrix in _supercell_matrices(unit.cell[:2], target, strain):
        base = _laid_onto(unit, matrix, atoms)
        if len(atoms) > len(base):
            continue
        # origin: an atom of the most common host element onto each of its sites
        numbers = atoms.numbers
        own = [z for z in np.unique(unit.numbers) if (numbers == z).any()]
        z = max(own, key=lambda z: (numbers == z).sum())
        anchors = np.flatnonzero(numbers == z)
        anchors = anchors[np.linspace(0, len(anchors) - 1, min(3, len(anchors))).astype(int)]
        sites = np.flatnonzero(base.numbers == z)[: int((unit.numbers == z).sum())]
        for a, s in itertools.product(anchors, sites):
            pristine = base.copy()
            pristine.positions += atoms.positions[a] - base.positions[s]
            yield pristine


def _area(ab: np.ndarray) -> float:
    return float(np.linalg.norm(np.cross(ab[0], ab[1])))


def _supercell_matrices(unit_ab: np.ndarray, target_ab: np.ndarray, strain: float
                        ) -> list[np.ndarray]:
    """Integer 2x2 matrices M with ``M @ unit_ab`` the lattice of ``target_ab`` up to a
    rotation (equal lengths and angle within ``strain``), best fits first."""
    g_unit = unit_ab @ unit_ab.T
    lengths = np.linalg.norm(target_ab, axis=1)
    cos_t = target_ab[0] @ target_ab[1] / lengths.prod()
    bound = int(np.ceil(lengths.max() * (1 + strain) * np.linalg.norm(unit_ab, axis=1).max()
                        / _area(unit_ab))) + 1
    pq = np.array(list(itertools.product(range(-bound, bound + 1), repeat=2)))
    norm = np.sqrt(np.einsum("ij,jk,ik->i", pq, g_unit, pq))
    rows = [pq[np.abs(norm / L - 1) <= strain] for L in lengths]
    found = []
    for m1, m2 in itertools.product(*rows):
        det = m1[0] * m2[1] - m1[1] * m2[0]
        if det == 0:
            continue
        l1, l2 = np.sqrt(m1 @ g_unit @ m1), np.sqrt(m2 @ g_unit @ m2)
        cos_m = (m1 @ g_unit @ m2) / (l1 * l2)
        if abs(cos_m - cos_t) > strain:
            continue
        misfit = max(abs(l1 / lengths[0] - 1), abs(l2 / lengths[1] - 1), abs(cos_m - cos_t))
        found.append((misfit, np.array([m1, m2])))
    found.sort(key=lambda f: f[0])
    return [m for misfit, m in found if misfit <= found[0][0] + 1e-4] if found else []


def _laid_onto(unit: Atoms, matrix: np.ndarray, atoms: Atoms) -> Atoms:
    """The ``matrix`` supercell of ``unit`` with its in-plane lattice mapped onto
    ``atoms``' first two cell vectors (a rotation, plus the small strain between them)
    and its out-of-plane coordinate along their normal; ``atoms``' cell and pbc."""
    from ase.build import make_supercell

    p = np.eye(3, dtype=int)
    p[:2, :2] = matrix
    sc = make_supercell(unit, p)
    ab = sc.cell[:2]
    normal = np.cross(ab[0], ab[1])
    normal /= np.linalg.norm(normal)
    # in-plane fractional coordinates and height above the unit cell's plane
    height = sc.positions @ normal
    inplane = sc.positions - height[:, None] * normal
    frac = np.linalg.lstsq(ab.T, inplane.T, rcond=None)[0].T  # (n, 2)
    target = atoms.cell[:2]
    t_normal = np.cross(target[0], target[1])
    t_normal /= np.linalg.norm(t_normal)
    return Atoms(numbers=sc.numbers, positions=frac @ target + height[:, None] * t_normal,
                 cell=atoms.cell, pbc=atoms.pbc)

