"""Physics of the network: rotation, translation, permutation, periodic wrap, batching."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase import Atoms
from scipy.spatial.transform import Rotation

from ase_definet import DefectStructure
from ase_definet.core.predict import predict_sites
from ase_definet.graph import collate
from ase_definet.model import scatter

from .conftest import tiny_model

TOL = {torch.float32: 1e-4, torch.float64: 1e-9}


def relaxed(model, atoms: Atoms, spec=None) -> np.ndarray:
    """Predicted coordinates of every site (n_sites, 3)."""
    return predict_sites(model, [DefectStructure.from_host(atoms, spec)])[0]


def rattled(host: Atoms, seed: int = 1) -> Atoms:
    at = host.copy()
    at.rattle(0.1, seed=seed)
    return at


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_rotation_equivariance(host, spec, dtype):
    model = tiny_model(dtype=dtype)
    at = rattled(host)
    ref = relaxed(model, at, spec)
    assert np.abs(ref - at.positions).max() > 1e-2  # the random model does move atoms
    for seed in range(3):
        R = Rotation.random(random_state=seed).as_matrix()
        rot = at.copy()
        rot.set_cell(at.cell[:] @ R.T, scale_atoms=False)
        rot.positions = at.positions @ R.T
        out = relaxed(model, rot, spec)
        assert np.abs(out - ref @ R.T).max() < TOL[dtype]


def axial_model(**kw):
    """A tiny model with the axial global channel switched on and live (its output map
    starts at zero in a fresh model, which would make the checks below vacuous)."""
    model = tiny_model(axial_global=True, **kw)
    with torch.no_grad():
        for layer in model.layers:
            if hasattr(layer, "ax_out"):
                layer.ax_out.weight.normal_(0.0, 1.0)
    return model


@pytest.mark.parametrize("axial", [False, True])
def test_reflection_equivariance(host, spec, axial):
    """Mirror images relax to mirror images (O(3), not only SO(3)); the cell's handedness
    is restored by swapping two lattice vectors, which changes no lattice point."""
    model = axial_model() if axial else tiny_model()
    at = rattled(host)
    ref = relaxed(model, at, spec)
    for seed in range(2):
        M = Rotation.random(random_state=seed).as_matrix() @ np.diag([1.0, 1.0, -1.0])
        mir = at.copy()
        cell = at.cell[:] @ M.T
        mir.set_cell(cell[[1, 0, 2]], scale_atoms=False)
        mir.positions = at.positions @ M.T
        out = relaxed(model, mir, spec)
        assert np.abs(out - ref @ M.T).max() < 1e-4


def test_axial_global_channel(host, spec):
    """Rotation-equivariant, live (it changes the prediction), and inert at initialisation
    so that switching it on for a trained checkpoint starts from that checkpoint."""
    at = rattled(host)
    live = axial_model()
    ref = relaxed(live, at, spec)
    R = Rotation.random(random_state=5).as_matrix()
    rot = at.copy()
    rot.set_cell(at.cell[:] @ R.T, scale_atoms=False)
    rot.positions = at.positions @ R.T
    assert np.abs(relaxed(live, rot, spec) - ref @ R.T).max() < 1e-4
    plain, fresh = tiny_model(), tiny_model(axial_global=True)
    fresh.load_state_dict(plain.state_dict(), strict=False)
    assert np.abs(relaxed(fresh, at, spec) - relaxed(plain, at, spec)).max() < 1e-6
    live.load_state_dict(plain.state_dict(), strict=False)
    assert np.abs(relaxed(live, at, spec) - relaxed(plain, at, spec)).max() > 1e-4


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_translation_equivariance(host, spec, dtype):
    model = tiny_model(dtype=dtype)
    at = rattled(host)
    ref = relaxed(model, at, spec)
    shift = np.array([1.3, -2.7, 0.9])
    moved = at.copy()
    moved.positions += shift  # atoms leave the cell: no wrapping here
    out = relaxed(model, moved, spec)
    assert np.abs(out - (ref + shift)).max() < TOL[dtype] * 10


def test_permutation_equivariance(host, spec, rng):
    model = tiny_model()
    at = rattled(host)
    ref = relaxed(model, at, spec)
    perm = rng.permutation(len(at))
    inv = np.argsort(perm)  # old site i is new site inv[i]
    spec_p = {"vacancies": [int(inv[i]) for i in spec["vacancies"]],
              "substitutions": {int(inv[i]): z for i, z in spec["substitutions"].items()}}
    out = relaxed(model, at[perm], spec_p)
    assert np.abs(out[inv] - ref).max() < 1e-4


def test_periodic_wrap_invariance(host, spec):
    """Moving atoms by lattice vectors (across the cell edge) moves their prediction by
    the same lattice vector and changes nothing else."""
    model = tiny_model()
    at = rattled(host)
    at.positions[:, 2] -= at.positions[:, 2].min() - 0.05  # bottom layer at the z edge
    ref = relaxed(model, at, spec)
    moved = at.copy()
    lat = np.zeros((len(at), 3))
    lat[::2] = at.cell[0] - 2 * at.cell[1]
    lat[1::3] += at.cell[2]
    moved.positions += lat
    out = relaxed(model, moved, spec)
    assert np.abs(out - lat - ref).max() < 1e-4
    # wrapping explicitly (scaled positions into [0, 1)) is one such move
    wrapped = moved.copy()
    wrapped.wrap()
    out_w = relaxed(model, wrapped, spec)
    assert np.abs((out_w - wrapped.positions) - (ref - at.positions)).max() < 1e-4


def test_batched_equals_one_by_one(host, spec):
    model = tiny_model()
    a, b = rattled(host, 1), rattled(host, 2) * (1, 2, 1)
    sa = DefectStructure.from_host(a, spec)
    sb = DefectStructure.from_host(b, {"vacancies": [1, 30]})
    together = predict_sites(model, [sa, sb])
    alone = [predict_sites(model, [s])[0] for s in (sa, sb)]
    for x, y in zip(together, alone):
        assert np.abs(x - y).max() < 1e-5


def test_edge_chunks_do_not_change_result(host, spec):
    at = rattled(host)
    big = tiny_model(edge_chunk=1 << 20)
    small = tiny_model(edge_chunk=97)
    assert np.abs(relaxed(big, at, spec) - relaxed(small, at, spec)).max() < 1e-5


def test_markers_matter(host):
    """Vacancy and substitution markers change the prediction (defect-aware)."""
    model = tiny_model()
    at = rattled(host)
    plain = relaxed(model, at)
    vac = relaxed(model, at, {"vacancies": [4]})
    assert np.abs(plain - vac).max() > 1e-3
    # S on S: only the marker differs (a graph edited by hand: DefectSpec refuses it)
    g = DefectStructure.from_host(at, None).graph(model.cutoff, model.max_neighbors)
    with torch.inference_mode():
        same = model(collate([g]))[-1].numpy()
        g.markers[4] = 1
        sub = model(collate([g]))[-1].numpy()
    assert np.abs(same - sub).max() > 1e-5  # exactly 0 if markers were ignored


def test_native_scatter_matches_torch_scatter(host, spec):
    pytest.importorskip("torch_scatter", reason="optional accelerator not installed")
    model = tiny_model(dtype=torch.float64)
    at = rattled(host)
    try:
        scatter.set_backend("native")
        native = relaxed(model, at, spec)
        scatter.set_backend("torch_scatter")
        ts = relaxed(model, at, spec)
    finally:
        scatter.set_backend("auto")
    assert np.abs(native - ts).max() < 1e-10


def test_scatter_ops_native(rng):
    src = torch.tensor(rng.normal(size=(50, 3, 4)))
    idx = torch.tensor(rng.integers(0, 7, 50))
    ref = torch.zeros(8, 3, 4)
    ref = ref.double()
    for k in range(50):
        ref[idx[k]] += src[k]
    scatter.set_backend("native")
    try:
        assert torch.allclose(scatter.scatter_sum(src, idx, 8), ref)
        cnt = torch.bincount(idx, minlength=8).clamp(min=1).double().view(-1, 1, 1)
        assert torch.allclose(scatter.scatter_mean(src, idx, 8), ref / cnt)
    finally:
        scatter.set_backend("auto")
    with pytest.raises(ValueError, match="unknown scatter backend"):
        scatter.set_backend("magic")
