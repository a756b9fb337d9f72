"""Derive a defect spec from a defective structure and its pristine host.

Each atom of the defective structure is matched to the nearest pristine site under the
minimum-image convention (robust to wrapped coordinates and to already-relaxed inputs);
unmatched pristine sites are vacancies, matched sites with another element are
substitutions. This is how 2DMD labels its pairs (fractional coordinates against the
ideal supercell). A rigid translation between the two (another origin) is found first,
from each atom's nearest site of its own element, and removed (least squares), so the
match and the displacements do not depend on it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from ase import Atoms
from ase.data import chemical_symbols
from scipy.optimize import linear_sum_assignment
from scipy.spatial import cKDTree

from ..graph.neighbors import check_cell, complete_cell
from .defects import DefectSpec

DEFAULT_TOLERANCE = 1.0  # Å: largest displacement of an atom from its pristine site


@dataclass(frozen=True)
class Match:
    """Result of matching a defective structure to its host.

    Attributes:
        spec: the derived defects.
        site_index: (n_atoms,) pristine site of every atom of the defective structure.
        offsets: (n_atoms, 3) Å, ``defective.positions - pristine.positions[site_index]``
            under the minimum-image convention (the atom's displacement from its site,
            ``translation`` included).
        translation: (3,) Å, the rigid translation of the defective structure against
            the host (least squares: the mean of ``offsets``); ``offsets - translation``
            are the displacements proper.
    """

    spec: DefectSpec
    site_index: np.ndarray
    offsets: np.ndarray
    translation: np.ndarray = field(default_factory=lambda: np.zeros(3))


def cell_change(before: Atoms, after: Atoms, rtol: float = 1e-3) -> str | None:
    """``None`` when ``after`` has the cell (within ``rtol`` of the longest vector) and
    pbc of ``before``, else what changed, e.g. ``"cell [a, b, c, al, be, ga] -> [...]"``."""
    if not np.allclose(after.cell[:], before.cell[:], atol=rtol * max(before.cell.lengths())):
        return (f"cell {before.cell.cellpar().round(3).tolist()} -> "
                f"{after.cell.cellpar().round(3).tolist()}")
    if not np.array_equal(after.pbc, before.pbc):
        return f"pbc {before.pbc.tolist()} -> {after.pbc.tolist()}"
    return None


def check_same_cell(atoms: Atoms, pristine: Atoms, rtol: float = 1e-3) -> None:
    check_cell(pristine.cell[:], pristine.pbc)
    change = cell_change(pristine, atoms, rtol)
    if change is not None:
        what = "the cells differ" if change.startswith("cell") else "the pbc differ"
        raise ValueError(f"the defective structure does not match its host: {what} "
                         f"(host -> defective: {change})")


def match_to_host(defective: Atoms, pristine: Atoms,
                  tolerance: float = DEFAULT_TOLERANCE) -> Match:
    """Match ``defective`` to the sites of ``pristine`` (neither is modified).

    The rigid translation between the two is removed before matching (see
    :attr:`Match.translation`); it must not exceed ``tolerance`` either.

    Raises:
        ValueError: cells differ, more atoms than sites, a rigid offset or an atom's
            displacement from its site beyond ``tolerance`` Å, or most atoms on sites of
            another element (the structure does not match its host).
    """
    check_same_cell(defective, pristine)
    n, m = len(defective), len(pristine)
    if n > m:
        raise ValueError(f"the defective structure does not match its host: it has {n} "
                         f"atoms, the host only {m} sites (interstitials are not supported)")
    if n == 0:
        raise ValueError("the defective structure has no atoms")
    cell = complete_cell(pristine.cell[:], pristine.pbc)  # a 2D slab may have no c vector
    sites = _Sites(pristine.positions, cell, pristine.pbc)
    positions = defective.positions
    # 1. a robust first guess of the rigid translation: each atom against the nearest
    # site of its own element (unambiguous across short bonds of two elements)
    guess = _translation_guess(positions, defective.numbers, pristine.numbers, sites)
    # 2. match after removing it, 3. the least-squares translation of that match, and
    # the match once more with it (the same unless the guess was off by much)
    site = _assign(positions - guess, sites)
    offsets = sites.mic(positions - pristine.positions[site])
    translation = offsets.mean(axis=0)
    again = _assign(positions - translation, sites)
    if not np.array_equal(again, site):
        site = again
        offsets = sites.mic(positions - pristine.positions[site])
        translation = offsets.mean(axis=0)
    shift = float(np.linalg.norm(translation))
    if shift > tolerance:
        raise ValueError(
            "the defective structure does not match its host: it sits at a rigid offset "
            f"of {shift:.2f} Å {np.round(translation, 2).tolist()} from the host's sites, "
            f"more than the matching tolerance ({tolerance} Å); give both structures the "
            "same origin, or a larger tolerance")
    far = np.linalg.norm(offsets - translation, axis=1)
    if far.max() > tolerance:
        a = int(far.argmax())
        raise ValueError(
            f"the defective structure does not match its host: atom {a} "
            f"({defective[a].symbol}) is {far[a]:.2f} Å from the nearest free pristine site "
            f"(tolerance {tolerance} Å)")
    foreign = int((pristine.numbers[site] != defective.numbers).sum())
    if foreign > n / 2:
        raise ValueError(
            f"the defective structure does not match its host: {foreign} of its {n} atoms "
            "sit on sites of another element (a different material, or an origin shifted "
            "by about a bond length against the host's)")
    vacancies = np.setdiff1d(np.arange(m), site)
    subs = {int(s): int(z) for s, z in zip(site, defective.numbers)
            if pristine.numbers[s] != z}
    spec = DefectSpec(vacancies=tuple(int(v) for v in vacancies), substitutions=subs)
    return Match(spec=spec, site_index=site.astype(int), offsets=offsets,
                 translation=translation)


class _Sites:
    """Periodic nearest-site queries on fixed site positions (n_sites, 3) Å."""

    def __init__(self, positions: np.ndarray, cell: np.ndarray, pbc: np.ndarray):
        self.positions, self.cell, self.pbc = positions, cell, np.asarray(pbc, dtype=bool)
        self.inv = np.linalg.inv(cell)

    def mic(self, delta: np.ndarray) -> np.ndarray:
        """Minimum image of (..., 3) vectors, Å."""
        frac = delta @ self.inv
        frac[..., self.pbc] -= np.round(frac[..., self.pbc])
        return frac @ self.cell

    def candidates(self, points: np.ndarray, k: int, subset: np.ndarray | None = None
                   ) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` nearest sites (of ``subset``, default all) of each point (n, 3):
        indices (n, k) and minimum-image distances (n, k), Å."""
        idx = np.arange(len(self.positions)) if subset is None else subset
        k = min(k, len(idx))
        if self.pbc.all():  # periodic fractional space first, refined in Cartesian
            tree = cKDTree(_wrap01(self.positions[idx] @ self.inv), boxsize=1.0)
            _, cand = tree.query(_wrap01(points @ self.inv), k=k)
            cand = idx[np.asarray(cand).reshape(len(points), k)]
        else:  # partial periodicity: compare with every site
            cand = np.tile(idx, (len(points), 1))
        dist = np.linalg.norm(self.mic(points[:, None, :] - self.positions[cand]), axis=2)
        return cand, dist


def _assign(points: np.ndarray, sites: _Sites) -> np.ndarray:
    """Nearest site of every point (n, 3), conflicts resolved optimally: (n,) indices."""
    cand, dist = sites.candidates(points, 8)
    site = cand[np.arange(len(points)), dist.argmin(axis=1)]
    if len(np.unique(site)) < len(points):  # atoms claim the same site
        site = _resolve_conflicts(site, cand, dist)
    return site


def _translation_guess(points: np.ndarray, numbers: np.ndarray, site_numbers: np.ndarray,
                       sites: _Sites) -> np.ndarray:
    """Median offset (3,) Å of each atom from the nearest site of its own element;
    zero when no element is shared. Robust to defects and displaced atoms (a minority)."""
    offsets = []
    for z in np.intersect1d(numbers, site_numbers):
        mine = numbers == z
        cand, _ = sites.candidates(points[mine], 1, np.flatnonzero(site_numbers == z))
        offsets.append(sites.mic(points[mine] - sites.positions[cand[:, 0]]))
    if not offsets:
        return np.zeros(3)
    return np.median(np.concatenate(offsets), axis=0)


def _resolve_conflicts(site: np.ndarray, cand: np.ndarray, dist: np.ndarray) -> np.ndarray:
    """Re-assign the atoms that share a site among their candidate sites (minimum total
    distance, linear_sum_assignment), keeping every other atom where it is."""
    site = site.copy()
    _, inverse, counts = np.unique(site, return_inverse=True, return_counts=True)
    clash = np.flatnonzero(counts[inverse] > 1)
    taken = set(np.delete(site, clash).tolist())
    cols = sorted(set(cand[clash].ravel().tolist()) - taken)
    col_of = {c: k for k, c in enumerate(cols)}
    cost = np.full((len(clash), len(cols)), 1e6)
    for r, a in enumerate(clash):
        for c, d in zip(cand[a], dist[a]):
            if c in col_of:
                cost[r, col_of[c]] = d
    if len(cols) < len(clash):
        raise ValueError("the defective structure does not match its host: several atoms "
                         "crowd around the same pristine sites")
    rows, chosen = linear_sum_assignment(cost)
    site[clash[rows]] = np.array(cols)[chosen]
    return site


def _wrap01(frac: np.ndarray) -> np.ndarray:
    """Fractional coordinates wrapped into [0, 1) (``% 1.0`` alone can return 1.0)."""
    out = np.mod(frac, 1.0)
    out[out >= 1.0] = 0.0
    return out


def describe(spec: DefectSpec, pristine: Atoms) -> str:
    """Human-readable summary, e.g. ``"V_S x2, W_Mo x1"``."""
    counts: dict[str, int] = {}
    for v in spec.vacancies:
        key = f"V_{pristine[v].symbol}"
        counts[key] = counts.get(key, 0) + 1
    for s, z in spec.substitutions.items():
        key = f"{chemical_symbols[z]}_{pristine[s].symbol}"
        counts[key] = counts.get(key, 0) + 1
    return ", ".join(f"{k} x{v}" for k, v in counts.items()) or "no defects"
