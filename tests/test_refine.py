"""Refinement stages (``DefiNetConfig.refine``, ``definet finetune --add-stage``)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from ase.io import read, write
from scipy.spatial.transform import Rotation

from ase_definet import DefectStructure, DefiNetRelaxer, load_checkpoint, save_checkpoint
from ase_definet.batch import relax_many
from ase_definet.cli import main as cli
from ase_definet.core.predict import predict_sites
from ase_definet.graph import collate
from ase_definet.model import DefiNet
from ase_definet.model.definet import remove_drift
from ase_definet.model.widen import widen_model
from ase_definet.train import Trainer
from ase_definet.train.evaluate import evaluate_model

from .conftest import small_host, tiny_model
from .test_train import cfg, datasets, synthetic_pairs

TOL = 1e-9  # float64


def graph_batch(model: DefiNet, atoms, spec):
    s = DefectStructure.from_host(atoms, spec)
    return collate([s.graph(model.cutoff, model.max_neighbors)], torch.float64)


def test_refined_forward_chains_the_stages(host, spec):
    model = tiny_model(refine=1, dtype=torch.float64)
    T = model.config.layers
    g = graph_batch(model, host, spec)
    with torch.no_grad():
        out = model(g)
        first = model._stage(g)
        second = model.refiners[0]._stage(replace(g, positions=first[-1]))
    assert len(out) == 2 * T + 1
    for a, b in zip(out, remove_drift(first + second[1:], g)):
        assert torch.equal(a, b)
    # the second stage moves atoms on from where the first left them
    assert float((out[-1] - out[T]).abs().max()) > 1e-2
    # the first stage is exactly a one-stage model with the same weights
    single = DefiNet(model.config, refine=0).to(torch.float64)
    single.load_state_dict({k: v for k, v in model.state_dict().items()
                            if not k.startswith("refiners.")})
    with torch.no_grad():
        assert torch.equal(single(g)[-1], out[T])


@pytest.mark.parametrize("short", [False, True])
def test_refined_model_is_equivariant(host, spec, short):
    from ase_definet.train.finetune import cut_refiners

    model = (cut_refiners(_short_refiner_model(), 1) if short  # 3 + 1 + 1 layers, axial
             else tiny_model(refine=1, dtype=torch.float64))
    at = host.copy()
    at.rattle(0.1, seed=3)
    ref = predict_sites(model, [DefectStructure.from_host(at, spec)])[0]
    R = Rotation.random(random_state=1).as_matrix()
    rot = at.copy()
    rot.set_cell(at.cell[:] @ R.T, scale_atoms=False)
    rot.positions = at.positions @ R.T
    rot.positions += np.array([0.3, -1.2, 0.7])
    out = predict_sites(model, [DefectStructure.from_host(rot, spec)])[0]
    assert np.abs(out - (ref @ R.T + np.array([0.3, -1.2, 0.7]))).max() < TOL


def test_extend_elements_reaches_every_stage():
    model = tiny_model(refine=2, elements=[16, 42])
    assert model.extend_elements([41]) == [41]
    for stage in [model, *model.refiners]:
        assert stage.elements == [16, 41, 42]
        assert stage.element_embedding.num_embeddings == 3


def test_stage_parameters_split_the_model():
    model = tiny_model(refine=1)
    first, last = model.stage_parameters(0), model.stage_parameters(-1)
    assert len(first) + len(last) == len(list(model.parameters()))
    assert {id(p) for p in first}.isdisjoint(id(p) for p in last)
    with pytest.raises(IndexError):
        model.stage_parameters(2)
    with pytest.raises(ValueError, match="refine must be >= 0"):
        DefiNet(hidden=8, layers=1, refine=-1)
    with pytest.raises(ValueError, match="before adding refinement stages"):
        widen_model(model, 2)


def test_training_the_first_stage_freezes_the_refiner(tmp_path):
    train, val = datasets(10)
    model = DefiNet(hidden=16, layers=2, cutoff=5.0, max_neighbors=24, refine=1,
                    elements=train.elements)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    t = Trainer(cfg(tmp_path, epochs=1, train_stage=0), train, val, model=model)
    t.fit()
    after = t.model.state_dict()
    for k, v in before.items():
        if k.startswith("refiners."):
            assert torch.equal(v, after[k]), k  # frozen
    assert any(not torch.equal(v, after[k]) for k, v in before.items()
               if not k.startswith("refiners."))  # trained
    with pytest.raises(ValueError, match="train_stage 3 does not exist"):
        Trainer(cfg(tmp_path / "x", train_stage=3), train, val, model=model)


def test_last_stage_trains_alone_on_staged_pairs(tmp_path):
    """Training the last stage alone on the frozen stages' predictions validates and
    saves the whole model: its saved checkpoint reproduces the logged val MAE on the
    original pairs, with the first stage untouched."""
    train, val = datasets(10)
    model = DefiNet(hidden=16, layers=2, cutoff=5.0, max_neighbors=24, refine=1,
                    elements=train.elements)
    first = {k: v.clone() for k, v in model.state_dict().items()
             if not k.startswith("refiners.")}
    t = Trainer(cfg(tmp_path, epochs=2, train_stage=-1), train, val, model=model)
    assert t.model is model.refiners[0] and t.full is model
    moved = t.train_set[0].graph.positions - train[0].graph.positions
    assert np.abs(moved).max() > 1e-3  # the pairs start from stage 1's prediction
    t.fit()
    best, _ = load_checkpoint(tmp_path / "best.safetensors")
    assert best.config.refine == 1
    for k, v in first.items():
        assert torch.equal(best.state_dict()[k], v), k
    acc, _ = evaluate_model(best, val)
    logged = min(row["val_mae"] for row in t.history)
    assert acc.mae() == pytest.approx(logged, rel=1e-5)
    assert acc.mae() != pytest.approx(t.history[0]["val_dummy_mae"], rel=1e-3)
    # resuming needs the same frozen stages: they come from the caller, not last.pt
    same = DefiNet(model.config).to(next(model.parameters()).dtype)
    same.load_state_dict(model.state_dict())
    assert Trainer(cfg(tmp_path, epochs=2, train_stage=-1), train, val, model=same).try_resume()
    other = DefiNet(model.config)  # other random weights, same configuration
    with pytest.raises(ValueError, match="other frozen stages"):
        Trainer(cfg(tmp_path, epochs=2, train_stage=-1), train, val, model=other).try_resume()


def test_finetune_add_stage_cli(tmp_path, capsys):
    frames = []
    for p in synthetic_pairs(10):
        frames += [p.unrelaxed, p.relaxed()]
    write(tmp_path / "pairs.extxyz", frames)
    write(tmp_path / "host.cif", small_host(3))
    base = tiny_model(hidden=16, layers=2)
    save_checkpoint(base, tmp_path / "base.safetensors", {"data": "test"})
    ft = ["finetune", "--from", str(tmp_path / "base.safetensors"), "--data",
          str(tmp_path / "pairs.extxyz"), "--pristine", str(tmp_path / "host.cif"),
          "--epochs", "1", "--batch-size", "4", "--lr", "1e-2"]
    assert cli(ft + ["--out", str(tmp_path / "r"), "--add-stage"]) == 0
    model, _ = load_checkpoint(tmp_path / "r" / "best.safetensors")
    assert model.config.refine == 1
    base_sd = base.state_dict()
    for k, v in model.state_dict().items():
        if k.startswith("refiners."):
            continue
        # the first stage was frozen (the saved EMA average of a constant rounds only)
        assert torch.allclose(v, base_sd[k], rtol=0, atol=1e-6), k
    stage = model.refiners[0].state_dict()
    assert max(float((v - base_sd[k]).abs().max()) for k, v in stage.items()
               if v.is_floating_point()) > 1e-3  # the new stage, a copy at first, trained
    assert "refinement stages after the first (an extension): 1" in (
        tmp_path / "r" / "best.md").read_text()
    capsys.readouterr()
    assert cli(ft + ["--out", str(tmp_path / "bad"), "--add-stage", "--train-stage", "2"]) == 2
    assert "train_stage 2 does not exist: the model has 2 stage(s)" in capsys.readouterr().err
    # a second stage on top starts as a copy of the last one (lr 0: nothing trains)
    two = ["finetune", "--from", str(tmp_path / "r" / "best.safetensors")] + ft[3:]
    assert cli(two + ["--out", str(tmp_path / "r2"), "--add-stage", "--lr", "0"]) == 0
    model2, _ = load_checkpoint(tmp_path / "r2" / "best.safetensors")
    assert model2.config.refine == 2
    sd2 = model2.state_dict()
    for k, v in model.state_dict().items():
        assert torch.allclose(sd2[k], v, rtol=0, atol=1e-6), k
    for k, v in model.refiners[0].state_dict().items():
        assert torch.allclose(sd2["refiners.1." + k], v, rtol=0, atol=1e-6), k


def test_inference_can_run_the_first_stages_only(host, spec, tmp_path, capsys):
    model = tiny_model(refine=2, dtype=torch.float64)
    single = DefiNet(model.config, refine=0).to(torch.float64)
    single.load_state_dict({k: v for k, v in model.state_dict().items()
                            if not k.startswith("refiners.")})
    one = DefiNetRelaxer(host, defects=spec, model=single, logfile=None)
    one.run()
    first = DefiNetRelaxer(host, defects=spec, model=model, logfile=None, stages=1)
    first.run()
    full = DefiNetRelaxer(host, defects=spec, model=model, logfile=None)
    full.run()
    T = model.config.layers
    assert len(first.layers) == T + 1 and len(full.layers) == 3 * T + 1  # layers, not steps
    assert np.abs(first.atoms.positions - one.atoms.positions).max() < TOL
    assert np.abs(full.atoms.positions - first.atoms.positions).max() > 1e-3
    assert full.todict()["stages_run"] == 3 and first.todict()["stages_run"] == 1
    many = relax_many([(host, spec)], model=model, stages=1, progress=False)
    assert np.abs(many[0].positions - one.atoms.positions).max() < TOL
    assert DefiNetRelaxer(host, defects=spec, model=model, stages=np.int64(2)).stages == 2
    for bad in (0, 4, 1.5, True):
        with pytest.raises(ValueError, match="stages must be an integer from 1 to 3"):
            DefiNetRelaxer(host, defects=spec, model=model, stages=bad)
    with pytest.raises(ValueError, match="stages must be an integer from 1 to 3"):
        relax_many([(host, spec)], model=model, stages=0, progress=False)
    # the command line: --stages
    save_checkpoint(model.float(), tmp_path / "m.safetensors")
    write(tmp_path / "host.cif", host)
    base = ["relax", str(tmp_path / "host.cif"), "--vacancies", "1", "--model",
            str(tmp_path / "m.safetensors"), "-q", "-o"]
    assert cli(base + [str(tmp_path / "a.xyz"), "--stages", "1"]) == 0
    assert cli(base + [str(tmp_path / "b.xyz")]) == 0
    a, b = read(tmp_path / "a.xyz"), read(tmp_path / "b.xyz")
    assert np.abs(a.positions - b.positions).max() > 1e-3
    assert cli(base + [str(tmp_path / "c.xyz"), "--stages", "5"]) == 2
    assert "stages must be an integer from 1 to 3" in capsys.readouterr().err


def _finetune_with_lr0(tmp_path, layers: int) -> tuple[DefiNet, list[str]]:
    """A three-stage tiny checkpoint in tmp_path and the start of a `definet finetune`
    command line for it (synthetic pairs, one epoch at lr 0: the output is the surgery's)."""
    frames = []
    for p in synthetic_pairs(10):
        frames += [p.unrelaxed, p.relaxed()]
    write(tmp_path / "pairs.extxyz", frames)
    write(tmp_path / "host.cif", small_host(3))
    base = tiny_model(hidden=16, layers=layers, refine=2)
    save_checkpoint(base, tmp_path / "base.safetensors", {"data": "test"})
    return base, ["finetune", "--from", str(tmp_path / "base.safetensors"), "--data",
                  str(tmp_path / "pairs.extxyz"), "--pristine", str(tmp_path / "host.cif"),
                  "--epochs", "1", "--batch-size", "4", "--lr", "0"]


def test_finetune_keep_stages_cuts_the_model_to_its_first_stages(tmp_path, host, spec, capsys):
    base, ft = _finetune_with_lr0(tmp_path, layers=2)
    assert cli(ft + ["--out", str(tmp_path / "one"), "--keep-stages", "1"]) == 0
    one, meta = load_checkpoint(tmp_path / "one" / "best.safetensors")
    assert one.config.refine == 0 and meta["kept_stages"] == {"kept": 1, "of": 3}
    # with lr 0 it computes what the base computes with stages=1
    cut = DefiNetRelaxer(host, defects=spec, model=one, logfile=None)
    cut.run()
    ref = DefiNetRelaxer(host, defects=spec, model=base, logfile=None, stages=1)
    ref.run()
    assert np.abs(cut.atoms.positions - ref.atoms.positions).max() < 1e-5
    full = DefiNetRelaxer(host, defects=spec, model=base, logfile=None)
    full.run()
    assert np.abs(full.atoms.positions - cut.atoms.positions).max() > 1e-4
    # two stages kept, a third added on top as a copy of the second
    assert cli(ft + ["--out", str(tmp_path / "two"), "--keep-stages", "2", "--add-stage"]) == 0
    three, _ = load_checkpoint(tmp_path / "two" / "best.safetensors")
    sd, b = three.state_dict(), base.state_dict()
    assert three.config.refine == 2
    for k, v in base.refiners[0].state_dict().items():
        assert torch.allclose(sd["refiners.1." + k], v, atol=1e-6), k
    assert not torch.allclose(sd["refiners.1.layers.0.V.weight"],
                              b["refiners.1.layers.0.V.weight"])
    capsys.readouterr()
    assert cli(ft + ["--out", str(tmp_path / "bad"), "--keep-stages", "4"]) == 2
    assert "--keep-stages must be from 1 to 3" in capsys.readouterr().err


def _short_refiner_model():
    """Three stages of 3 layers (axial channel live), float64."""
    from .test_equivariance import axial_model

    model = axial_model(dtype=torch.float64, hidden=16, refine=2)
    with torch.no_grad():
        for stage in model.refiners:
            for layer in stage.layers:
                if hasattr(layer, "ax_out"):
                    layer.ax_out.weight.normal_(0.0, 1.0)
    return model


def test_cut_refiners_keep_what_the_first_refiner_had_after_its_first_layers(host, spec):
    from ase_definet.train.finetune import cut_refiners

    base = _short_refiner_model()
    at = host.copy()
    at.rattle(0.05, seed=3)
    s = [DefectStructure.from_host(at, spec)]
    full = predict_sites(base, s, all_layers=True)[0]  # (10, n, 3)
    assert base.stage_ends() == [3, 6, 9] and len(full) == 10
    for k in (1, 2):
        cut = cut_refiners(base, k)
        assert cut.refiner_layers == k and cut.config.layers == 3
        assert cut.stage_ends() == [3, 3 + k, 3 + 2 * k]
        assert cut.stage_ends(2) == [3, 3 + k] and cut.stage_ends(9) == cut.stage_ends()
        assert all(len(r.layers) == k for r in cut.refiners)
        assert not cut.refiners[0].layers[-1].aggregate
        out = predict_sites(cut, s, all_layers=True)[0]
        assert len(out) == 4 + 2 * k
        np.testing.assert_allclose(out[: 4 + k], full[: 4 + k], atol=1e-10)
        assert np.abs(out[-1] - full[-1]).max() > 1e-4  # the last stage starts elsewhere
    assert cut_refiners(base, 3) is base
    with pytest.raises(ValueError, match="from 1 to 3"):
        cut_refiners(base, 4)
    with pytest.raises(ValueError, match="has none"):
        cut_refiners(tiny_model(), 1)


def test_short_refiners_round_trip_through_a_checkpoint(host, spec, tmp_path):
    """The file carries refine_layers; a config that claims other layers is refused."""
    from ase_definet.train.finetune import cut_refiners

    model = cut_refiners(_short_refiner_model(), 1)
    at = host.copy()
    at.rattle(0.05, seed=4)
    ref = predict_sites(model, [DefectStructure.from_host(at, spec)])[0]
    save_checkpoint(model, tmp_path / "short.safetensors", {"data": "test"})
    back, _ = load_checkpoint(tmp_path / "short.safetensors")
    assert back.config.refine_layers == 1
    again = predict_sites(back.double(), [DefectStructure.from_host(at, spec)])[0]
    np.testing.assert_allclose(again, ref, atol=1e-6)
    from ase_definet.core.checkpoint import _check_shapes

    bad = replace(model.config, refine_layers=2)
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match="refine_layers=2, but the file holds 1"):
        _check_shapes(tmp_path / "short.safetensors", bad, shapes)


def test_finetune_refine_layers_from_the_command_line(tmp_path, host, spec, capsys):
    _, ft = _finetune_with_lr0(tmp_path, layers=3)
    assert cli(ft + ["--out", str(tmp_path / "s"), "--keep-stages", "2",
                     "--refine-layers", "1"]) == 0
    short, meta = load_checkpoint(tmp_path / "s" / "best.safetensors")
    assert short.config.refine == 1 and short.refiner_layers == 1
    assert meta["cut_refine_layers"] == {"kept": 1, "of": 3}
    assert meta["kept_stages"] == {"kept": 2, "of": 3}
    r = DefiNetRelaxer(host, defects=spec, model=short, logfile=None)
    r.run()
    assert r.layers.shape[0] == 5 and np.isfinite(r.uncertainty).all()
    assert r.todict()["refine_layers"] == 1
    capsys.readouterr()
    assert cli(["info", str(tmp_path / "s" / "best.safetensors")]) == 0
    assert "3 layers + 1 refinement stage of 1 layer" in capsys.readouterr().out
    assert cli(ft + ["--out", str(tmp_path / "bad"), "--refine-layers", "4"]) == 2
    assert "--refine-layers must be from 1 to 3" in capsys.readouterr().err
