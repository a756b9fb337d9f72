"""Graph building: atoms -> arrays (no model, no ASE optimizer machinery)."""

from .graph import (
    N_MARKERS,
    PRISTINE,
    SUBSTITUTION,
    VACANCY,
    Graph,
    GraphBatch,
    build_graph,
    collate,
)
from .neighbors import check_cell, neighbor_graph

__all__ = ["N_MARKERS", "PRISTINE", "SUBSTITUTION", "VACANCY", "Graph", "GraphBatch",
           "build_graph", "check_cell", "collate", "neighbor_graph"]
