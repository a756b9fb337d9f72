"""The inference-only forward pass (``model/inference.py``) gives the reference numbers:
the autograd path of ``DefiNetLayer.forward``, and that path's stored output (computed
when the weights were shipped), both on the shipped weights, to 1e-5 Å."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from ase_definet import DefectStructure, get_model
from ase_definet.core.checkpoint import stored_checksum
from ase_definet.core.hosts import get_host
from ase_definet.graph import collate

from .conftest import tiny_model

TOL = 1e-5  # Å
REFERENCE = Path(__file__).parent / "data" / "definet_reference.npy"
REFERENCE_WEIGHTS = REFERENCE.with_suffix(".sha256")  # stored checksum of the weights it is from
# the structures of REFERENCE: every layer of every stage, (13, 48 + 32, 3) Å, float32
# reference (autograd) forward pass of the shipped weights/default.safetensors; after shipping new
# weights, rewrite it (and REFERENCE_WEIGHTS) with `python -m tests.test_fast_forward`
ITEMS = [("MoS2", 4, {"vacancies": [1, 20], "substitutions": {6: "W", 31: "Se"}}),
         ("hBN", 4, {"vacancies": [3], "substitutions": {10: "C"}})]


def batch_of(model, items=ITEMS):
    graphs = []
    for name, n, spec in items:
        host = replace(get_host(name), supercell=(n, n, 1)).pristine()
        s = DefectStructure.from_host(host, spec, model.elements)
        graphs.append(s.graph(model.cutoff, model.max_neighbors))
    return collate(graphs, next(model.parameters()).dtype)


@pytest.fixture(scope="module")
def shipped():
    return get_model("default", "cpu").eval()


def test_reference_is_from_the_shipped_weights():
    """A stale reference says so, instead of failing below with a 0.06 Å difference."""
    shipped_sha = stored_checksum("default")
    assert len(shipped_sha) == 64
    assert REFERENCE_WEIGHTS.read_text().strip() == shipped_sha, (
        f"{REFERENCE.name} was computed from other weights than the shipped default "
        f"(sha256 {shipped_sha[:12]}): rewrite it with `python -m tests.test_fast_forward`")


def test_fast_forward_matches_reference_on_shipped_weights(shipped):
    g = batch_of(shipped)
    with torch.enable_grad():
        ref = torch.stack(shipped(g)).detach()
    with torch.inference_mode():
        fast = torch.stack(shipped(g))
    assert fast.shape == ref.shape == (13, 80, 3)
    assert float((fast - ref).abs().max()) < TOL
    stored = torch.from_numpy(np.load(REFERENCE)).to(fast.dtype)
    assert float((fast - stored).abs().max()) < TOL
    assert float((ref - stored).abs().max()) < TOL
    # the test is not vacuous: the layers do move atoms
    assert float((fast[-1] - fast[0]).abs().max()) > 0.05


def test_fast_forward_follows_weight_changes():
    """The fused weights are rebuilt when a parameter changes in place."""
    model = tiny_model(refine=1, axial_global=True, dtype=torch.float64).eval()
    items = [("MoS2", 2, {"vacancies": [1], "substitutions": {4: "W"}})]
    g = batch_of(model, items)
    for _ in range(2):
        with torch.no_grad():
            fast = torch.stack(model(g))
        ref = torch.stack(model(g)).detach()
        assert float((fast - ref).abs().max()) < 1e-9
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.01 * torch.randn_like(p))


def test_fast_forward_follows_a_replaced_submodule():
    """A submodule assigned anew (not changed in place) is read anew, too."""
    model = tiny_model(2).eval()
    g = batch_of(model, [("MoS2", 2, {"vacancies": [1]})])
    with torch.no_grad():
        before = torch.stack(model(g))
        layer = model.layers[0]
        new = torch.nn.Linear(layer.V.in_features, layer.V.out_features, bias=False)
        new.weight.copy_(3.0 * layer.V.weight + 0.5 * torch.randn_like(layer.V.weight))
        layer.V = new
        fast = torch.stack(model(g))
    ref = torch.stack(model(g)).detach()
    assert float((fast - ref).abs().max()) < 1e-6  # float32 rounding at ~10 Å
    assert float((fast - before).abs().max()) > 1e-5


def test_fast_basis_is_the_radial_basis_bit_for_bit():
    from ase_definet.model.inference import _basis
    from ase_definet.model.layers import GaussianRBF

    rbf = GaussianRBF(32, 6.0)
    d = torch.cat([torch.rand(5000) * 7.0, torch.tensor([0.0, 6.0, 5.999999, 1e-9])])
    fast = _basis(rbf, d)
    assert torch.equal(fast[:, :-1], rbf(d)) and torch.equal(fast[:, -1], torch.ones(len(d)))
    assert (fast[:, :-1] == 0).any() and (fast[:, :-1] > 0).any()  # both branches of the mask


def test_radial_basis_values_and_gradient_are_those_of_the_masked_exponential():
    import math

    from ase_definet.model.layers import GaussianRBF

    rbf = GaussianRBF(32, 6.0)
    d = (torch.rand(2000, dtype=torch.float64) * 7.0).requires_grad_()
    arg = -0.5 * ((d[:, None] - rbf.centers.double()) / rbf.width) ** 2
    env = 0.5 * (torch.cos(d * (math.pi / 6.0)) + 1.0) * (d < 6.0)
    ref = torch.where(arg > -80.0, torch.exp(arg.clamp(min=-80.0)), 0.0) * env[:, None]
    (g_ref,) = torch.autograd.grad(ref.sum(), d)
    out = rbf.double()(d)
    (g,) = torch.autograd.grad(out.sum(), d)
    assert torch.equal(out, ref) and (out == 0).any()
    assert torch.isfinite(g).all() and torch.allclose(g, g_ref, rtol=1e-12, atol=0)


if __name__ == "__main__":  # rewrite REFERENCE from the shipped default's autograd path
    model = get_model("default", "cpu").eval()
    with torch.enable_grad():
        np.save(REFERENCE, torch.stack(model(batch_of(model))).detach().numpy())
    REFERENCE_WEIGHTS.write_text(stored_checksum("default") + "\n")
    print(f"wrote {REFERENCE} and {REFERENCE_WEIGHTS}")
