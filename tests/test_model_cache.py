"""get_model caches loading, never the caller's model: one caller's changes stay its own."""

from __future__ import annotations

import time

import torch

from ase_definet import DefiNetRelaxer, get_model, save_checkpoint

from .conftest import tiny_model


def test_one_callers_model_changes_are_invisible_to_another(tmp_path, host, spec):
    path = save_checkpoint(tiny_model(elements=[16, 34, 42, 74]), tmp_path / "m.safetensors")
    a, b = get_model(path, "cpu"), get_model(path, "cpu")
    assert a is not b
    assert a.extend_elements([92]) == [92]  # fine-tuning on new chemistry
    with torch.no_grad():
        next(a.parameters()).add_(1.0)
    a.to(torch.float64)
    c = get_model(path, "cpu")
    assert 92 not in b.elements and 92 not in c.elements
    assert next(c.parameters()).dtype == torch.float32
    assert torch.equal(next(b.parameters()), next(c.parameters()))
    r1 = DefiNetRelaxer(host, defects=spec, model=path, device="cpu", logfile=None)
    r2 = DefiNetRelaxer(host, defects=spec, model=path, device="cpu", logfile=None)
    r1.model.extend_elements([94])
    assert 94 not in r2.model.elements


def test_rewritten_checkpoint_is_reloaded(tmp_path):
    path = tmp_path / "m.safetensors"
    save_checkpoint(tiny_model(seed=0), path)
    first = get_model(path, "cpu")
    time.sleep(0.01)
    save_checkpoint(tiny_model(seed=1), path)  # training rewrites best.safetensors
    again = get_model(path, "cpu")
    assert not torch.equal(next(first.parameters()), next(again.parameters()))
