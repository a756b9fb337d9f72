"""Derive a defect spec from a defective structure and its pristine host.

Each atom of the defective structure is matched to the nearest pristine site under the
minimum-image convention (robust to wrapped coordinates and to already-relaxed inputs);
unmatched pristine sites are vacancies, matched sites with another element are
substitutions. This is how 2DMD labels its pairs (fractional coordinates against the
ideal supercell).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from ase import Atoms
from ase.data import chemical_symbols
from scipy.optimize import linear_sum_assignment
from scipy.spatial import cKDTree

from .defects import DefectSpec
from .graph.neighbors import check_cell, complete_cell

DEFAULT_TOLERANCE = 1.0  # Å: largest displacement of an atom from its pristine site


@dataclass(frozen=True)
class Match:
    """Result of matching a defective structure to its host.

    Attributes:
        spec: the derived defects.
        site_index: (n_atoms,) pristine site of every atom of the defective structure.
        offsets: (n_atoms, 3) Å, ``defective.positions - pristine.positions[site_index]``
            under the minimum-image convention (the atom's displacement from its site).
    """

    spec: DefectSpec
    site_index: np.ndarray
    offsets: np.ndarray


def check_same_cell(atoms: Atoms, pristine: Atoms, rtol: float = 1e-3) -> None:
    check_cell(pristine.cell[:], pristine.pbc)
    if not np.allclose(atoms.cell[:], pristine.cell[:], atol=rtol * max(pristine.cell.lengths())):
        raise ValueError("the defective structure does not match its host: the cells differ "
                         f"(defective {atoms.cell.cellpar().round(3).tolist()}, host "
                         f"{pristine.cell.cellpar().round(3).tolist()})")
    if not np.array_equal(atoms.pbc, pristine.pbc):
        raise ValueError(f"the defective structure does not match its host: pbc "
                         f"{atoms.pbc.tolist()} vs {pristine.pbc.tolist()}")


def match_to_host(defective: Atoms, pristine: Atoms,
                  tolerance: float = DEFAULT_TOLERANCE) -> Match:
    """Match ``defective`` to the sites of ``pristine`` (neither is modified).

    Raises:
        ValueError: cells differ, more atoms than sites, or an atom lies farther than
            ``tolerance`` Å from every pristine site (the structure does not match its
            host).
    """
    check_same_cell(defective, pristine)
    n, m = len(defective), len(pristine)
    if n > m:
        raise ValueError(f"the defective structure does not match its host: it has {n} "
                         f"atoms, the host only {m} sites (interstitials are not supported)")
    if n == 0:
        raise ValueError("the defective structure has no atoms")
    cell = complete_cell(pristine.cell[:], pristine.pbc)  # a 2D slab may have no c vector
    inv = np.linalg.inv(cell)
    pbc = pristine.pbc

    def mic(delta: np.ndarray) -> np.ndarray:  # minimum image of (..., 3) vectors
        frac = delta @ inv
        frac[..., pbc] -= np.round(frac[..., pbc])
        return frac @ cell

    # candidate sites: nearest few in periodic fractional space, refined in Cartesian
    k = min(8, m)
    if pbc.all():
        tree = cKDTree(_wrap01(pristine.positions @ inv), boxsize=1.0)
        _, cand = tree.query(_wrap01(defective.positions @ inv), k=k)
        cand = np.asarray(cand).reshape(n, k)
    else:  # partial periodicity: compare with every site
        cand = np.tile(np.arange(m), (n, 1))
    delta = mic(defective.positions[:, None, :] - pristine.positions[cand])
    dist = np.linalg.norm(delta, axis=2)
    best = dist.argmin(axis=1)
    site = cand[np.arange(n), best]
    if len(np.unique(site)) < n:  # atoms claim the same site: resolve them optimally
        site = _resolve_conflicts(site, cand, dist)
    offsets = mic(defective.positions - pristine.positions[site])
    far = np.linalg.norm(offsets, axis=1)
    if far.max() > tolerance:
        a = int(far.argmax())
        raise ValueError(
            f"the defective structure does not match its host: atom {a} "
            f"({defective[a].symbol}) is {far[a]:.2f} Å from the nearest free pristine site "
            f"(tolerance {tolerance} Å)")
    vacancies = np.setdiff1d(np.arange(m), site)
    subs = {int(s): int(z) for s, z in zip(site, defective.numbers)
            if pristine.numbers[s] != z}
    spec = DefectSpec(vacancies=tuple(int(v) for v in vacancies), substitutions=subs)
    return Match(spec=spec, site_index=site.astype(int), offsets=offsets)


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
