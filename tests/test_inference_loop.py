"""The one batched inference loop (predict.iter_layer_outputs): prediction, evaluation,
staged training and calibration give what a plain forward pass gives, and the model's
train/eval mode is restored, also on an error."""

from __future__ import annotations

from contextlib import closing

import numpy as np
import pytest
import torch

from ase_definet.core.predict import iter_layer_outputs, predict_sites
from ase_definet.graph import collate
from ase_definet.train.calibrate import collect
from ase_definet.train.dataset import PairDataset, iter_batches
from ase_definet.train.evaluate import evaluate_model
from ase_definet.train.staging import staged_dataset

from .conftest import tiny_model
from .test_train import synthetic_pairs


@pytest.fixture(scope="module")
def pairs():
    return synthetic_pairs(5)


def _plain_forward(model, graphs, **kw) -> list[torch.Tensor]:
    model.eval()
    with torch.inference_mode():
        return model(collate(graphs, dtype=next(model.parameters()).dtype), **kw)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_predict_sites_is_a_plain_forward_pass(pairs, dtype):
    model = tiny_model(refine=1, dtype=dtype)
    structures = [p.structure for p in pairs]
    graphs = [s.graph(model.cutoff, model.max_neighbors) for s in structures]
    layers = _plain_forward(model, graphs)
    model.train()
    got = predict_sites(model, structures, all_layers=True)
    first = predict_sites(model, structures, stages=1)
    assert model.training
    disp = (torch.stack(layers) - layers[0]).double().numpy()
    first_disp = (_plain_forward(model, graphs, stages=1)[-1] - layers[0]).double().numpy()
    off = 0
    for s, g, all_layers, one in zip(structures, graphs, got, first):
        sl = slice(off, off + g.n_sites)
        off += g.n_sites
        assert np.array_equal(all_layers, s.site_positions + disp[:, sl])  # bit-identical
        assert np.array_equal(one, s.site_positions + first_disp[sl])


def test_evaluate_model_is_a_plain_forward_pass(pairs):
    model = tiny_model()
    ds = PairDataset.from_pairs(pairs, model.cutoff, model.max_neighbors, progress=False)
    acc, arrays = evaluate_model(model, ds, batch_size=2, collect=True)
    errors, preds = [], []
    for batch in iter_batches(ds, 2, shuffle=False):  # the same batches, run directly
        model.eval()
        with torch.inference_mode():
            pred = model(batch.graph)[-1].double().numpy()
        start, target = batch.graph.positions.double().numpy(), batch.target.double().numpy()
        mask = batch.mask.numpy()
        errors.append(np.linalg.norm(pred - target, axis=1)[mask])
        preds.append((pred - start)[mask])
    errors = np.concatenate(errors)
    assert acc.counts[("overall", "all")] == len(errors)
    assert np.array_equal(arrays["pred"], np.concatenate(preds))  # bit-identical
    np.testing.assert_allclose(acc.mae(), errors.mean(), rtol=1e-12)  # summed per group


def test_the_loop_yields_per_structure_outputs_outside_inference_mode(pairs):
    model = tiny_model(refine=1)
    ds = PairDataset.from_pairs(pairs, model.cutoff, model.max_neighbors, progress=False)
    model.train()
    seen = 0
    with closing(iter_layer_outputs(model, iter_batches(ds, 2, shuffle=False))) as outputs:
        for batch, out in outputs:
            assert not model.training and not torch.is_inference_mode_enabled()
            assert len(out.layers) == 2 * model.config.layers + 1
            assert [sl.stop - sl.start for sl in out.slices] == [
                ds[seen + i].graph.n_sites for i in range(batch.graph.num_graphs)]
            seen += batch.graph.num_graphs
            break  # leaving early: closing() restores the mode at once
    assert model.training and seen == 2


def _failing(model):
    def forward(*args, **kwargs):
        assert not model.training and torch.is_inference_mode_enabled()
        raise RuntimeError("forward failed")
    model.forward = forward
    return model


@pytest.mark.parametrize("mode", [True, False])
def test_the_model_mode_is_restored_after_an_error(pairs, mode):
    model = tiny_model(refine=1)
    ds = PairDataset.from_pairs(pairs, model.cutoff, model.max_neighbors, progress=False)
    _failing(model).train(mode)
    calls = [lambda: predict_sites(model, [pairs[0].structure]),
             lambda: evaluate_model(model, ds),
             lambda: staged_dataset(model, ds, 1, progress=False),
             lambda: collect(model, ds, progress=False)]
    for call in calls:
        with pytest.raises(RuntimeError, match="forward failed"):
            call()
        assert model.training is mode
