"""Site permutations of a crystal's space-group operations (spglib)."""

from __future__ import annotations

import numpy as np
import spglib
from ase import Atoms
from scipy.spatial import cKDTree


def site_permutations(atoms: Atoms, symprec: float = 1e-3) -> np.ndarray:
    """Permutations of the sites of ``atoms`` induced by its symmetry operations.

    Returns:
        (n_ops, n_sites) int array ``perm``: operation ``k`` maps site ``i`` onto
        site ``perm[k, i]``. Row 0 is the identity.
    """
    cell = (np.asarray(atoms.cell), atoms.get_scaled_positions(), atoms.numbers)
    sym = spglib.get_symmetry(cell, symprec=symprec)
    if sym is None:
        raise ValueError("spglib could not determine the symmetry of the host")
    frac = atoms.get_scaled_positions() % 1.0
    tree = cKDTree(frac, boxsize=1.0)
    perms = []
    for rot, trans in zip(sym["rotations"], sym["translations"]):
        new = (frac @ rot.T + trans) % 1.0
        new[new >= 1.0] = 0.0
        dist, idx = tree.query(new)
        if dist.max() > 10 * symprec or not np.array_equal(atoms.numbers[idx], atoms.numbers):
            continue  # numerically doubtful operation: skip rather than corrupt
        perms.append(idx)
    perms = np.unique(np.array(perms), axis=0)
    ident = np.arange(len(atoms))
    rest = perms[~(perms == ident).all(axis=1)]
    return np.vstack([ident, rest])
