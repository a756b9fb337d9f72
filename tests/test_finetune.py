"""Fine-tuning surgery (train/finetune.py): widening, a new refinement stage, the axial
channel and the neighbour cap, each keeping the checkpoint's output."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ase_definet import DefectStructure
from ase_definet.core.predict import predict_sites
from ase_definet.train.finetune import (
    FINETUNE_CHANGES,
    check_finetune_changes,
    finetune_metadata,
    finetune_train_stage,
    load_base_weights,
    prepare_finetune,
)

from .conftest import tiny_model


@pytest.fixture
def structures(host, spec):
    at = host.copy()
    at.rattle(0.05, seed=1)
    return [DefectStructure.from_host(at, spec)]


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_nothing_changed_is_an_exact_copy(structures):
    base = tiny_model(refine=1)
    model = prepare_finetune(base)
    assert model is not base and model.config.to_dict() == base.config.to_dict()
    assert np.array_equal(predict_sites(model, structures)[0],
                          predict_sites(base, structures)[0])
    assert finetune_metadata(base, model, "w") == {"finetuned_from": "w"}


def test_widening_keeps_the_output_and_leaves_the_base_alone(structures):
    base = tiny_model(dtype=torch.float64)
    before = _state(base)
    model = prepare_finetune(base, hidden=64, seed=3)
    assert model.config.hidden == 64 and base.config.hidden == 32
    np.testing.assert_allclose(predict_sites(model, structures)[0],
                               predict_sites(base, structures)[0], atol=1e-9)
    assert all(torch.equal(v, before[k]) for k, v in base.state_dict().items())
    assert finetune_metadata(base, model, "w")["widened"] == {"from_hidden": 32,
                                                               "to_hidden": 64}
    for bad in (48, 16):
        with pytest.raises(ValueError, match="multiple of the checkpoint's width 32"):
            prepare_finetune(base, hidden=bad)


def test_add_stage_copies_the_last_stage(structures):
    base = tiny_model(refine=1, dtype=torch.float64)
    model = prepare_finetune(base, add_stage=True)
    assert model.config.refine == 2
    last, new = base.refiners[-1].state_dict(), model.refiners[-1].state_dict()
    assert last.keys() == new.keys() and all(torch.equal(last[k], new[k]) for k in last)
    # the first two stages are the base's: its prediction is the new model's 2-stage one
    assert np.array_equal(predict_sites(model, structures, stages=2)[0],
                          predict_sites(base, structures)[0])
    single = prepare_finetune(tiny_model(), add_stage=True)  # a copy of the only stage
    assert single.config.refine == 1
    assert finetune_train_stage(None, add_stage=True) == -1
    assert finetune_train_stage(0, add_stage=True) == 0
    assert finetune_train_stage(None, add_stage=False) is None


def test_axial_channel_and_neighbour_cap_may_change(structures):
    base = tiny_model(dtype=torch.float64)
    model = prepare_finetune(base, axial_global=True, max_neighbors=12)
    assert model.config.axial_global and model.config.max_neighbors == 12
    same_graph = prepare_finetune(base, axial_global=True)  # the channel starts inert
    np.testing.assert_allclose(predict_sites(same_graph, structures)[0],
                               predict_sites(base, structures)[0], atol=1e-12)


def test_other_changes_and_mismatched_weights_are_refused():
    check_finetune_changes({k: 1 for k in FINETUNE_CHANGES})
    with pytest.raises(ValueError, match=r"drop \['cutoff', 'layers'\]"):
        check_finetune_changes({"layers": 3, "cutoff": 4.0, "hidden": 64})
    with pytest.raises(ValueError, match=r"w\.safetensors does not match"):
        load_base_weights(tiny_model(layers=2), tiny_model(), name="w.safetensors")
