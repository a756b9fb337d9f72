"""Periodic neighbour lists: a pure function of positions, cell and pbc.

Built on matscipy's ``neighbour_list``; the optional cap keeps at most ``max_neighbors``
nearest neighbours per node without ever splitting a shell of equidistant neighbours,
so the graph (and hence the prediction) does not depend on atom order, rotation,
translation or on which periodic image an atom was wrapped into.
"""

from __future__ import annotations

import numpy as np
from matscipy.neighbours import neighbour_list

SHELL_TOL = 1e-3  # Å: neighbours closer than this in distance belong to one shell


def check_cell(cell: np.ndarray, pbc: np.ndarray) -> None:
    """Raise ``ValueError`` for a non-periodic or degenerate cell.

    Only periodic directions need a lattice vector: a 2D slab with ``pbc=[True, True,
    False]`` and a zero third vector (``ase.build.mx2()`` without vacuum) is valid.
    """
    cell = np.asarray(cell, dtype=float)
    pbc = np.asarray(pbc, dtype=bool)
    if not np.isfinite(cell).all():
        raise ValueError("non-finite cell (NaN or inf in a lattice vector)")
    if not pbc.any():
        raise ValueError("the structure is not periodic (pbc is False in every direction); "
                         "DefiNet needs a periodic host cell")
    lengths = np.linalg.norm(cell, axis=1)
    if (lengths[pbc] < 1e-6).any():
        raise ValueError(f"degenerate cell: lattice vector length(s) {lengths.round(4).tolist()} Å "
                         f"(pbc {pbc.tolist()}: every periodic direction needs a vector)")
    full = complete_cell(cell, pbc)
    vol = abs(np.linalg.det(full))
    if vol < 1e-6 * np.linalg.norm(full, axis=1).prod():
        raise ValueError(f"degenerate cell: the lattice vectors are (nearly) coplanar "
                         f"(volume {vol:.3g} Å^3)")


def complete_cell(cell: np.ndarray, pbc: np.ndarray) -> np.ndarray:
    """``cell`` (3, 3) Å with each zero-length vector of a non-periodic direction
    replaced by a unit vector orthogonal to the others (a copy; no periodic vector
    changes). Non-periodic vectors carry no length, but the neighbour list and
    fractional coordinates need an invertible matrix."""
    from ase.geometry import complete_cell as _complete

    cell = np.array(cell, dtype=float)
    zero = (np.linalg.norm(cell, axis=1) < 1e-6) & ~np.asarray(pbc, dtype=bool)
    if zero.any():
        cell[zero] = 0.0
        cell = np.asarray(_complete(cell), dtype=float)
    return cell


def neighbor_graph(positions: np.ndarray, cell: np.ndarray, pbc: np.ndarray, cutoff: float,
                   max_neighbors: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Directed edges j -> i within ``cutoff``, capped at ``max_neighbors`` per receiver.

    Args:
        positions: (n, 3) Å. Atoms may lie outside the cell.
        cell: (3, 3) Å, lattice vectors as rows.
        pbc: (3,) bool.
        cutoff: Å.
        max_neighbors: keep only the nearest neighbours of each receiver ``i``: all
            neighbours strictly closer (by more than ``SHELL_TOL``) than the
            ``(max_neighbors+1)``-th one, i.e. at most ``max_neighbors`` unless one shell
            alone is larger. ``None`` keeps all.

    Returns:
        edge_index: (2, n_edges) int64, rows (sender j, receiver i), sorted by receiver.
        shifts: (n_edges, 3) float64 Å, such that the edge vector is
            ``positions[j] + shifts - positions[i]``.
    """
    positions = np.ascontiguousarray(positions, dtype=float)
    cell = np.asarray(cell, dtype=float)
    pbc = np.asarray(pbc, dtype=bool)
    check_cell(cell, pbc)
    if not np.isfinite(positions).all():
        raise ValueError("non-finite positions (NaN or inf): no neighbour list")
    i, j, d, S = neighbour_list("ijdS", positions=positions, cell=complete_cell(cell, pbc),
                                pbc=pbc, cutoff=float(cutoff))
    order = np.lexsort((d, i))
    i, j, d, S = i[order], j[order], d[order], S[order]
    if max_neighbors is not None and len(i):
        i, j, d, S = _cap(i, j, d, S, int(max_neighbors), len(positions))
    shifts = S.astype(float) @ cell
    return np.stack([j, i]).astype(np.int64), shifts


def _cap(i, j, d, S, k: int, n: int):
    """Keep, per receiver, neighbours closer than the (k+1)-th by more than SHELL_TOL.

    Input sorted by (i, d); fully vectorised.
    """
    counts = np.bincount(i, minlength=n)
    start = np.concatenate([[0], np.cumsum(counts)[:-1]])
    over = counts > k  # receivers that need a cap
    if not over.any():
        return i, j, d, S
    limit = np.full(n, np.inf)
    limit[over] = d[start[over] + k] - SHELL_TOL  # distance of the (k+1)-th neighbour
    keep = d < limit[i]
    # a single shell larger than k: keep that whole first shell rather than nothing
    first = d[start[i]]
    keep |= over[i] & (limit[i] <= first) & (d < first + SHELL_TOL)
    return i[keep], j[keep], d[keep], S[keep]
