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


def test_relaxers_share_the_cached_weights_until_one_takes_its_own(tmp_path, host, spec):
    from ase_definet.core.checkpoint import shared_model

    path = save_checkpoint(tiny_model(elements=[16, 34, 42, 74]), tmp_path / "m.safetensors")
    r1, r2 = (DefiNetRelaxer(host, defects=spec, model=path, device="cpu", logfile=None)
              for _ in range(2))
    assert r1._net is r2._net is shared_model(path, "cpu")  # no copy per relaxer
    r1.run()
    before = r1.atoms.positions.copy()
    own = r1.model  # a copy of r1's own from here on, and what r1 predicts with
    assert own is r1.model and own is not r2._net
    with torch.no_grad():
        for p in own.parameters():
            p.mul_(0.5)
    r3 = DefiNetRelaxer(host, defects=spec, model=path, device="cpu", logfile=None)
    r1b = DefiNetRelaxer(host, defects=spec, model=own, logfile=None)
    r3.run(), r1b.run()
    assert (r3.atoms.positions == before).all()  # the shared weights are untouched
    assert not (r1b.atoms.positions == before).all()  # the changed copy is used
    assert not any(m.training for m in shared_model(path, "cpu").modules())
