"""The predicted structure keeps the input's centroid of atoms (``conserve_centroid``)."""

from __future__ import annotations

import pytest
import torch

from ase_definet import DefectStructure
from ase_definet.graph import collate

from .conftest import small_host, tiny_model

STRUCTURES = [(3, {"vacancies": [4, 10], "substitutions": {0: "W", 5: "Se"}}),
              (4, {"vacancies": [7]})]


def _batch(model, items=STRUCTURES):
    structures = [DefectStructure.from_host(small_host(n), spec) for n, spec in items]
    return collate([s.graph(model.cutoff, model.max_neighbors) for s in structures],
                   torch.float64)


def _atom_centroids(pos: torch.Tensor, g) -> torch.Tensor:
    """(B, 3) mean position of each graph's atoms (vacancy placeholders left out)."""
    keep = g.markers != 2
    return torch.stack([pos[keep & (g.batch == b)].mean(0) for b in range(g.num_graphs)])


@pytest.mark.parametrize("grad", [True, False])  # reference and inference-only paths
def test_prediction_keeps_the_centroid_of_the_atoms(grad):
    model = tiny_model(refine=1, dtype=torch.float64)
    g = _batch(model)
    with torch.set_grad_enabled(grad):
        out = [r.detach() for r in model(g)]
        free = model.blank_like(conserve_centroid=False)
        free.load_state_dict(model.state_dict())
        raw = [r.detach() for r in free(g)]
    c0 = _atom_centroids(out[0], g)
    for r in out[1:]:
        assert torch.allclose(_atom_centroids(r, g), c0, atol=1e-10)
    # without the constraint the same weights drift, so the check above can fail
    assert float((_atom_centroids(raw[-1], g) - c0).abs().max()) > 1e-4
    # and the constraint only removes a rigid shift per graph, placeholders included
    shift = raw[-1] - out[-1]
    for b in range(g.num_graphs):
        s = shift[g.batch == b]
        assert torch.allclose(s, s[:1].expand_as(s), atol=1e-10)
    assert float((shift[g.batch == 0][0] - shift[g.batch == 1][0]).abs().max()) > 1e-6


def test_one_graph_and_a_batch_agree():
    model = tiny_model(dtype=torch.float64)
    g = _batch(model)
    with torch.no_grad():
        both = model(g)[-1]
        one = model(_batch(model, STRUCTURES[:1]))[-1]
    assert torch.allclose(both[g.batch == 0], one, atol=1e-10)
