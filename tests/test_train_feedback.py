"""Feedback while training: the starting weights' validation MAE, progress within an
epoch without a terminal, and a warning when the validation split is too small."""

from __future__ import annotations

import logging

import pytest

from ase_definet.core.checkpoint import read_metadata
from ase_definet.train import PairDataset, Trainer
from ase_definet.train import trainer as trainer_module
from ase_definet.train.evaluate import evaluate_model

from .test_train import cfg, datasets


def test_start_mae_is_measured_once_saved_and_kept_on_resume(tmp_path, caplog):
    train, val = datasets()
    t = Trainer(cfg(tmp_path, epochs=1), train, val)
    acc, _ = evaluate_model(t.model, val, 3, t.device)  # the untrained weights
    with caplog.at_level(logging.INFO, logger="ase_definet.train.trainer"):
        result = t.fit()
    assert result["start_val_mae"] == pytest.approx(acc.mae())
    assert t.start["val_dummy_mae"] == pytest.approx(acc.mae(region="dummy_all"))
    assert f"before training (initial weights): val MAE {acc.mae():.4f}" in caplog.text
    _, meta = read_metadata(tmp_path / "best.safetensors")
    assert meta["metrics"]["start_val_mae"] == pytest.approx(acc.mae())
    resumed = Trainer(cfg(tmp_path, epochs=2), train, val)
    assert resumed.try_resume()
    assert resumed.start == pytest.approx(t.start)  # from last.pt, not re-measured
    assert resumed.fit()["start_val_mae"] == pytest.approx(acc.mae())


def test_progress_lines_without_a_terminal(tmp_path, caplog, monkeypatch):
    monkeypatch.setattr(trainer_module, "PROGRESS_INTERVAL_S", 0.0)
    train, val = datasets()
    t = Trainer(cfg(tmp_path, epochs=1, batch_size=3), train, val)
    with caplog.at_level(logging.INFO, logger="ase_definet.train.trainer"):
        t.fit()
    batches = t.batches_per_epoch()
    notes = [r.getMessage() for r in caplog.records if "batch " in r.getMessage()]
    assert batches == 3 and [m.split(",")[0] for m in notes] == [
        f"epoch 1: batch {i}/{batches}" for i in range(1, batches + 1)]


def test_too_small_validation_split_warns(tmp_path, caplog):
    train, val = datasets()
    with caplog.at_level(logging.WARNING, logger="ase_definet.train.trainer"):
        Trainer(cfg(tmp_path / "a"), train, PairDataset(val.samples[:1]))
    assert "only 1 validation pair(s)" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="ase_definet.train.trainer"):
        Trainer(cfg(tmp_path / "b"), train, PairDataset(val.samples * 5))
    assert "validation pair" not in caplog.text
