"""Knowledge distillation: ``TrainConfig.distill_from`` adds a trained model's
predictions as a second target."""

from __future__ import annotations

import pytest
import torch

from ase_definet import load_checkpoint, save_checkpoint
from ase_definet.train import Trainer
from ase_definet.train.dataset import collate_samples
from ase_definet.train.trainer import masked_distance_loss

from .conftest import tiny_model
from .test_train import cfg, datasets


@pytest.fixture
def distiller(tmp_path):
    """A saved random model with the graph settings of ``cfg``'s (cutoff 5 Å, N=24)."""
    path = tmp_path / "distiller.safetensors"
    save_checkpoint(tiny_model(seed=3, hidden=16, layers=2, elements=[16, 42, 74],
                               displacement_init=0.3), path)
    return path


def distance_to(model, other, ds) -> float:
    """Mean distance (Å) between two models' predictions over the atoms of ``ds``."""
    b = collate_samples(ds.samples)
    with torch.no_grad():
        return float(masked_distance_loss(model(b.graph)[-1], other(b.graph)[-1], b.mask))


def test_the_loss_mixes_labels_and_the_distilled_predictions(tmp_path, distiller):
    train, val = datasets()
    t = Trainer(cfg(tmp_path / "a", distill_from=str(distiller), distill_weight=0.25),
                train, val)
    b = collate_samples(train.samples)
    pred = b.graph.positions + 0.05
    with torch.no_grad():
        soft = t.distiller(b.graph)[-1]
    expected = (0.75 * masked_distance_loss(pred, b.target, b.mask)
                + 0.25 * masked_distance_loss(pred, soft, b.mask))
    assert torch.allclose(t.loss(pred, b), expected)
    # the distiller's output is not the label: the mix differs from either term
    assert not torch.allclose(expected, masked_distance_loss(pred, b.target, b.mask))
    assert not any(p.requires_grad for p in t.distiller.parameters())
    # without input noise the predictions are computed once and ride in the batches
    cached = collate_samples(t.train_set.samples)
    assert cached.soft is not None and torch.allclose(cached.soft, soft, atol=1e-5)
    assert torch.allclose(t.loss(pred, cached), expected, atol=1e-6)
    noisy = Trainer(cfg(tmp_path / "n", distill_from=str(distiller), input_noise=0.01),
                    train, val)
    assert all(s.soft is None for s in noisy.train_set.samples)  # computed every step


def test_a_student_trained_on_the_distiller_alone_moves_toward_it(tmp_path, distiller):
    train, val = datasets(20)
    teacher = load_checkpoint(distiller)[0]
    runs = {}
    for w in (0.0, 1.0):
        t = Trainer(cfg(tmp_path / str(w), epochs=8, lr=3e-3, ema_decay=0.5,
                        distill_from=str(distiller), distill_weight=w), train, val)
        start = distance_to(t.model, teacher, val)
        t.fit()
        runs[w] = distance_to(t.ema_model(), teacher, val)
    assert runs[1.0] < 0.5 * start
    assert runs[1.0] < 0.5 * runs[0.0]
    meta = load_checkpoint(tmp_path / "1.0" / "best.safetensors")[1]
    assert meta["distilled_from"]["weights"] == str(distiller)
    assert meta["distilled_from"]["weight"] == 1.0
    assert len(meta["distilled_from"]["sha256"]) == 64


def test_bad_distillation_settings_are_refused(tmp_path, distiller):
    train, val = datasets()
    with pytest.raises(ValueError, match="distill_weight must be from 0 to 1"):
        Trainer(cfg(tmp_path / "w", distill_from=str(distiller), distill_weight=1.5),
                train, val)
    with pytest.raises(ValueError, match="drop --train-stage"):
        Trainer(cfg(tmp_path / "s", distill_from=str(distiller), train_stage=0), train, val)
    other = tmp_path / "wide.safetensors"
    save_checkpoint(tiny_model(cutoff=6.0, elements=[16, 42, 74]), other)
    with pytest.raises(ValueError, match=r"graph settings \(cutoff 6.0"):
        Trainer(cfg(tmp_path / "c", distill_from=str(other)), train, val)
    few = tmp_path / "few.safetensors"
    save_checkpoint(tiny_model(elements=[16, 42]), few)
    with pytest.raises(ValueError, match=r"does not know element\(s\) \['W'\]"):
        Trainer(cfg(tmp_path / "e", distill_from=str(few)), train, val)
