"""Function-preserving widening of a trained model (``definet finetune --hidden``)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ase_definet import DefectStructure
from ase_definet.core.predict import predict_sites
from ase_definet.model.widen import widen_model

from .test_equivariance import axial_model, rattled


@pytest.mark.parametrize("factor", [2, 3])
def test_widened_model_computes_the_same_coordinates(host, spec, factor):
    model = axial_model(dtype=torch.float64)  # n_rbf = hidden = 32: axes must not be confused
    at = rattled(host)
    s = [DefectStructure.from_host(at, spec)]
    ref = predict_sites(model, s)[0]
    assert np.abs(ref - at.positions).max() > 1e-2
    wide = widen_model(model, factor)
    assert wide.config.hidden == factor * model.config.hidden
    assert wide.config.axial_global and wide.config.n_rbf == model.config.n_rbf
    n_old = sum(p.numel() for p in model.parameters())
    assert sum(p.numel() for p in wide.parameters()) > 2 * n_old
    np.testing.assert_allclose(predict_sites(wide, s)[0], ref, atol=1e-9)
    # the original is untouched
    np.testing.assert_allclose(predict_sites(model, s)[0], ref, atol=0)


def test_widened_copies_grow_apart(host, spec):
    """Copied channels start equal but must not stay copies: their input weights differ,
    so one gradient step moves them apart."""
    from ase_definet.graph.graph import collate

    model = axial_model(dtype=torch.float64)
    wide = widen_model(model, 2)
    F = model.config.hidden
    seen = {}
    wide.layers[1].phi_s.register_forward_hook(lambda m, i, o: seen.update(out=o.detach()))
    s = DefectStructure.from_host(rattled(host), spec)
    g = collate([s.graph(wide.cutoff, wide.max_neighbors)], dtype=torch.float64)
    pred = wide(g)[-1]
    np.testing.assert_allclose(seen["out"][:, :F], seen["out"][:, F:], atol=1e-10)
    (pred ** 2).sum().backward()
    with torch.no_grad():
        for p in wide.parameters():
            p -= 1e-3 * p.grad
    wide(g)
    assert (seen["out"][:, :F] - seen["out"][:, F:]).abs().max() > 1e-6


def test_widen_rejects_bad_factors(model):
    for bad in (0, 1.5, -2):
        with pytest.raises(ValueError, match="positive integer"):
            widen_model(model, bad)


def test_blank_like_keeps_device_dtype_and_rejects_unknown_settings():
    model = axial_model(dtype=torch.float64)
    blank = model.blank_like(refine=1)
    assert blank.config.refine == 1 and model.config.refine == 0
    assert next(blank.parameters()).dtype == torch.float64
    assert blank.config.hidden == model.config.hidden
    with pytest.raises(ValueError, match="hidden_size"):
        model.blank_like(hidden_size=64)
