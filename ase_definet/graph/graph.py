"""The defect-explicit graph of one structure, and batches of them as tensors.

Every site of the pristine host is a node (vacancies keep a placeholder node at their
pristine position), carrying an atomic number and a marker (0 pristine, 1 substitution,
2 vacancy). Edges come from :func:`~ase_definet.graph.neighbors.neighbor_graph`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from .neighbors import neighbor_graph

PRISTINE, SUBSTITUTION, VACANCY = 0, 1, 2  # node markers
N_MARKERS = 3


@dataclass
class Graph:
    """One structure's graph as numpy arrays.

    Attributes:
        numbers: (n_sites,) atomic numbers (a vacancy keeps the host element).
        markers: (n_sites,) 0 pristine, 1 substitution, 2 vacancy.
        positions: (n_sites, 3) Å, initial coordinates.
        edge_index: (2, n_edges) rows (sender j, receiver i).
        shifts: (n_edges, 3) Å periodic shift of the sender.
        cell: (3, 3) Å.
    """

    numbers: np.ndarray
    markers: np.ndarray
    positions: np.ndarray
    edge_index: np.ndarray
    shifts: np.ndarray
    cell: np.ndarray

    @property
    def n_sites(self) -> int:
        return len(self.numbers)


def build_graph(numbers: np.ndarray, markers: np.ndarray, positions: np.ndarray,
                cell: np.ndarray, pbc: np.ndarray, cutoff: float,
                max_neighbors: int | None) -> Graph:
    """Build the marked neighbour graph of one structure (see :class:`Graph`)."""
    edge_index, shifts = neighbor_graph(positions, cell, pbc, cutoff, max_neighbors)
    return Graph(numbers=np.asarray(numbers, dtype=np.int64),
                 markers=np.asarray(markers, dtype=np.int64),
                 positions=np.asarray(positions, dtype=float), edge_index=edge_index,
                 shifts=shifts, cell=np.asarray(cell, dtype=float))


@dataclass
class GraphBatch:
    """Several graphs as one disconnected graph of tensors.

    Attributes:
        numbers, markers: (N,) int64.
        positions: (N, 3) Å.
        edge_index: (2, E) int64, global node indices.
        shifts: (E, 3) Å.
        batch: (N,) int64 graph index of every node.
        num_graphs: number of graphs B.
    """

    numbers: torch.Tensor
    markers: torch.Tensor
    positions: torch.Tensor
    edge_index: torch.Tensor
    shifts: torch.Tensor
    batch: torch.Tensor
    num_graphs: int

    def to(self, device: torch.device | str | None = None,
           dtype: torch.dtype | None = None) -> GraphBatch:
        """Move to ``device``; floating tensors are cast to ``dtype`` if given."""
        def mv(t: torch.Tensor) -> torch.Tensor:
            if t.is_floating_point() and dtype is not None:
                return t.to(device=device, dtype=dtype, non_blocking=True)
            return t.to(device=device, non_blocking=True)
        return GraphBatch(mv(self.numbers), mv(self.markers), mv(self.positions),
                          mv(self.edge_index), mv(self.shifts), mv(self.batch),
                          self.num_graphs)

    @property
    def n_sites(self) -> list[int]:
        return torch.bincount(self.batch, minlength=self.num_graphs).tolist()


def collate(graphs: Sequence[Graph], dtype: torch.dtype = torch.float32) -> GraphBatch:
    """Concatenate graphs into one :class:`GraphBatch` (node indices offset per graph)."""
    if not graphs:
        raise ValueError("cannot collate an empty list of graphs")
    sizes = np.array([g.n_sites for g in graphs])
    offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    edge_index = np.concatenate([g.edge_index + o for g, o in zip(graphs, offsets)], axis=1)
    return GraphBatch(
        numbers=torch.from_numpy(np.concatenate([g.numbers for g in graphs])),
        markers=torch.from_numpy(np.concatenate([g.markers for g in graphs])),
        positions=torch.from_numpy(np.concatenate([g.positions for g in graphs])).to(dtype),
        edge_index=torch.from_numpy(edge_index),
        shifts=torch.from_numpy(np.concatenate([g.shifts for g in graphs])).to(dtype),
        batch=torch.from_numpy(np.repeat(np.arange(len(graphs)), sizes)),
        num_graphs=len(graphs),
    )
