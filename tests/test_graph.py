"""The marked neighbour graph: edges, periodic shifts, the neighbour cap."""

from __future__ import annotations

import numpy as np
import pytest
from ase.neighborlist import neighbor_list

from ase_definet.graph import build_graph, collate, neighbor_graph

from .conftest import small_host


def _edges(edge_index, shifts, positions):
    j, i = edge_index
    vec = positions[j] + shifts - positions[i]
    return {(int(a), int(b), *np.round(v, 6)) for a, b, v in zip(i, j, vec)}


def test_edges_match_ase_neighbor_list(host):
    at = host.copy()
    at.rattle(0.05, seed=3)
    at.positions += [0.0, 0.0, 5.5]  # atoms across the top of the cell, not wrapped
    ei, sh = neighbor_graph(at.positions, at.cell[:], at.pbc, cutoff=4.0)
    i, j, D = neighbor_list("ijD", at, 4.0)
    ref = {(int(a), int(b), *np.round(v, 6)) for a, b, v in zip(i, j, D)}
    assert _edges(ei, sh, at.positions) == ref
    assert (np.diff(ei[1]) >= 0).all()  # sorted by receiver


def test_cap_keeps_nearest_and_whole_shells(host):
    at = host.copy()
    ei, sh = neighbor_graph(at.positions, at.cell[:], at.pbc, 6.0, max_neighbors=10)
    counts = np.bincount(ei[1], minlength=len(at))
    assert counts.max() <= 10
    vec = at.positions[ei[0]] + sh - at.positions[ei[1]]
    d = np.linalg.norm(vec, axis=1)
    full_ei, full_sh = neighbor_graph(at.positions, at.cell[:], at.pbc, 6.0)
    fd = np.linalg.norm(at.positions[full_ei[0]] + full_sh - at.positions[full_ei[1]], axis=1)
    for node in range(len(at)):
        kept = d[ei[1] == node]
        dropped = np.setdiff1d(np.round(fd[full_ei[1] == node], 6), np.round(kept, 6))
        assert len(kept) > 0
        if len(dropped):
            assert kept.max() < dropped.min() - 1e-4  # never splits a shell


def test_cap_keeps_an_oversized_first_shell():
    at = small_host(3)
    # cap 2 is smaller than the 6 equidistant first neighbours of Mo: keep all 6
    ei, _ = neighbor_graph(at.positions, at.cell[:], at.pbc, 3.0, max_neighbors=2)
    counts = np.bincount(ei[1], minlength=len(at))
    assert counts[0] == 6


def test_positions_not_mutated(host):
    pos = host.positions.copy()
    cell = host.cell[:].copy()
    neighbor_graph(host.positions, host.cell[:], host.pbc, 5.0, 20)
    assert np.array_equal(pos, host.positions) and np.array_equal(cell, host.cell[:])


def test_build_and_collate_offsets(host):
    n = len(host)
    g = build_graph(host.numbers, np.zeros(n), host.positions, host.cell[:], host.pbc, 5.0, 24)
    b = collate([g, g])
    assert b.positions.shape == (2 * n, 3)
    assert b.edge_index.shape[1] == 2 * g.edge_index.shape[1]
    assert b.edge_index[:, g.edge_index.shape[1]:].min() == n
    assert b.batch.tolist() == [0] * n + [1] * n
    with pytest.raises(ValueError, match="empty"):
        collate([])
