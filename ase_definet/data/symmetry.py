"""Symmetry operations of a crystal as site permutations (spglib)."""

from __future__ import annotations

import numpy as np
import spglib
from ase import Atoms
from scipy.spatial import cKDTree


def symmetry_operations(atoms: Atoms, symprec: float = 1e-3,
                        types: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The space-group operations of ``atoms`` as Cartesian rotations and site maps.

    Args:
        atoms: a periodic structure.
        symprec: spglib's tolerance, Å.
        types: (n_sites,) labels that operations must preserve; defaults to the
            atomic numbers (pass others to tell vacancy or substitution sites apart).

    Returns:
        ``rotations`` (n_ops, 3, 3) Cartesian, and ``perms`` (n_ops, n_sites) int:
        operation ``k`` moves site ``i`` onto site ``perms[k, i]`` and turns a vector
        ``v`` at that site into ``rotations[k] @ v``. Operations that do not map the
        sites onto each other within ``10 * symprec`` are skipped.
    """
    types = np.asarray(atoms.numbers if types is None else types)
    frac = atoms.get_scaled_positions() % 1.0
    cell = np.asarray(atoms.cell)
    sym = spglib.get_symmetry((cell, frac, types), symprec=symprec)
    if sym is None:
        raise ValueError("spglib could not determine the symmetry of the structure")
    tree = cKDTree(frac, boxsize=1.0)
    to_frac = np.linalg.inv(cell.T)
    rotations, perms = [], []
    for rot, trans in zip(sym["rotations"], sym["translations"]):
        new = (frac @ rot.T + trans) % 1.0
        new[new >= 1.0] = 0.0
        dist, idx = tree.query(new)
        if dist.max() > 10 * symprec or not np.array_equal(types[idx], types):
            continue  # numerically doubtful operation: skip rather than corrupt
        rotations.append(cell.T @ rot @ to_frac)
        perms.append(idx)
    return np.array(rotations).reshape(-1, 3, 3), np.array(perms, dtype=np.int64)


def site_permutations(atoms: Atoms, symprec: float = 1e-3) -> np.ndarray:
    """Distinct site permutations of the symmetry operations of ``atoms``.

    Returns:
        (n_ops, n_sites) int array ``perm``: operation ``k`` maps site ``i`` onto
        site ``perm[k, i]``. Row 0 is the identity.
    """
    _, perms = symmetry_operations(atoms, symprec)
    perms = np.unique(perms, axis=0)
    ident = np.arange(len(atoms))
    rest = perms[~(perms == ident).all(axis=1)]
    return np.vstack([ident, rest])


def symmetrize_vectors(vectors: np.ndarray, rotations: np.ndarray,
                       perms: np.ndarray) -> np.ndarray:
    """Average a per-site vector field over symmetry operations (the group projection).

    ``vectors`` (n_sites, 3); ``rotations``, ``perms`` as from
    :func:`symmetry_operations`. When the operations form a group (all of a
    structure's, as that function returns unless it skipped a doubtful one), the result
    is the closest field (least squares) that they leave unchanged: what an exactly
    equivariant model must predict.
    """
    out = np.zeros_like(vectors, dtype=float)
    for rot, perm in zip(rotations, perms):
        out[perm] += vectors @ rot.T
    return out / len(perms)
