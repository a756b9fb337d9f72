"""Training: datasets, resumable deterministic trainer, fine-tuning, evaluation CLI."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from ase.io import write

from ase_definet import DefectSpec, load_checkpoint, save_checkpoint
from ase_definet.cli import main as cli
from ase_definet.data.store import Pair
from ase_definet.train import PairDataset, TrainConfig, Trainer
from ase_definet.train.dataset import read_extxyz_pairs
from ase_definet.train.metrics import distance_to_defects

from .conftest import small_host, tiny_model


@pytest.fixture(autouse=True)
def deterministic():
    """Deterministic kernels, as `definet train` sets them (set_up_torch): exact resumes
    on any number of threads. Restored afterwards."""
    before = (torch.are_deterministic_algorithms_enabled(),
              torch.is_deterministic_algorithms_warn_only_enabled())
    torch.use_deterministic_algorithms(True, warn_only=True)
    yield
    torch.use_deterministic_algorithms(before[0], warn_only=before[1])


def synthetic_pairs(n: int, seed: int = 0, sub: str = "W") -> list[Pair]:
    """Atoms near a vacancy move 0.2 Å toward it, scaled by exp(-d/2)."""
    rng = np.random.default_rng(seed)
    host = small_host(3)
    pairs = []
    for k in range(n):
        vac, s = rng.choice(len(host), 2, replace=False)
        spec = DefectSpec(vacancies=(int(vac),), substitutions={int(s): sub})
        un = spec.apply(host)
        un.rattle(0.02, seed=k)
        d = un.positions - host.positions[vac]
        frac = d @ np.linalg.inv(host.cell[:])
        d = (frac - np.round(frac)) @ host.cell[:]
        r = np.linalg.norm(d, axis=1, keepdims=True)
        relaxed = un.positions - 0.2 * d / r * np.exp(-r / 2)
        split = ["train", "train", "train", "val", "test"][k % 5]
        pairs.append(Pair(un, relaxed, host.copy(), spec,
                          {"material": "MoS2", "density": "high", "split": split}))
    return pairs


def datasets(n=15, **kw):
    ds = PairDataset.from_pairs(synthetic_pairs(n, **kw), 5.0, 24, progress=False)
    return ds.subset(split="train"), ds.subset(split="val")


def cfg(out, **kw) -> TrainConfig:
    base = dict(out=str(out), epochs=3, batch_size=3, lr=2e-3, seed=0, early_stop=100,
                model={"hidden": 16, "layers": 2, "cutoff": 5.0, "max_neighbors": 24})
    return TrainConfig(**{**base, **kw})


def test_killed_run_resumes_to_the_same_result(tmp_path):
    train, val = datasets()
    full = Trainer(cfg(tmp_path / "a"), train, val)
    full.fit()
    part = Trainer(cfg(tmp_path / "b", epochs=2), train, val)
    part.fit()
    resumed = Trainer(cfg(tmp_path / "b"), train, val)
    assert resumed.try_resume() and resumed.epoch == 2
    resumed.fit()
    for k, v in full.model.state_dict().items():
        assert torch.equal(v, resumed.model.state_dict()[k]), k
    a = (tmp_path / "a" / "log.csv").read_text().splitlines()
    b = (tmp_path / "b" / "log.csv").read_text().splitlines()
    strip = [lambda rows: [",".join(r.split(",")[:-1]) for r in rows]][0]  # drop seconds
    assert strip(a) == strip(b) and len(a) == 4
    ckpt, meta = load_checkpoint(tmp_path / "a" / "best.safetensors")
    assert meta["metrics"]["val_mae"] > 0 and ckpt.cutoff == 5.0
    state = torch.load(tmp_path / "a" / "last.pt", weights_only=True)
    assert state["epoch"] == 3


def test_cosine_schedule_decays_and_resumes_exactly(tmp_path):
    train, val = datasets()
    full = Trainer(cfg(tmp_path / "a", schedule="cosine", min_lr=1e-5), train, val)
    full.fit()
    lrs = [row["lr"] for row in full.history]
    assert lrs[0] < 2e-3 and lrs == sorted(lrs, reverse=True)
    assert lrs[-1] == pytest.approx(1e-5)  # the end of the cosine
    part = Trainer(cfg(tmp_path / "b", schedule="cosine", min_lr=1e-5), train, val)
    part.cfg.epochs = 2  # killed after two of three epochs
    part.fit()
    resumed = Trainer(cfg(tmp_path / "b", schedule="cosine", min_lr=1e-5), train, val)
    assert resumed.try_resume() and resumed.epoch == 2
    resumed.fit()
    for k, v in full.model.state_dict().items():
        assert torch.equal(v, resumed.model.state_dict()[k]), k
    with pytest.raises(ValueError, match="unknown schedule"):
        Trainer(cfg(tmp_path / "c", schedule="linear"), train, val)


def test_training_reduces_the_error(tmp_path):
    train, val = datasets(20)
    t = Trainer(cfg(tmp_path, epochs=25, lr=3e-3, ema_decay=0.9), train, val)
    t.fit()
    hist = t.history
    assert hist[-1]["val_mae"] < 0.7 * hist[0]["val_mae"]
    assert hist[-1]["val_mae"] < hist[-1]["val_dummy_mae"]


def test_finetune_adds_new_element(tmp_path):
    base = tiny_model(elements=[16, 42], hidden=16, layers=2)
    train, val = datasets(10, sub="Nb")  # Nb is new to the checkpoint
    t = Trainer(cfg(tmp_path, epochs=1), train, val, model=base)
    assert 41 in t.model.elements and 16 in t.model.elements
    t.fit()
    m, _ = load_checkpoint(tmp_path / "best.safetensors")
    assert m.elements == [16, 41, 42]


def test_distance_to_defects_is_periodic():
    host = small_host(3)
    near = distance_to_defects(host.positions, host.cell[:], np.array([0]))
    ref = host.get_distances(0, range(len(host)), mic=True)
    assert np.allclose(near, ref)


def test_extxyz_pairs_and_cli_train_evaluate(tmp_path, capsys, monkeypatch):
    host = small_host(3)
    pairs = synthetic_pairs(10)
    frames = []
    for p in pairs:
        un = p.unrelaxed.copy()
        perm = np.random.default_rng(0).permutation(len(un))
        un, rel = un[perm], p.relaxed()[perm]  # any atom order
        un.wrap()
        frames += [un, rel]
    write(tmp_path / "pairs.extxyz", frames)
    write(tmp_path / "host.cif", host)
    back = read_extxyz_pairs(tmp_path / "pairs.extxyz", host)
    for a, b in zip(pairs, back):
        assert a.spec == b.spec
        assert np.abs(a.relaxed_positions - b.relaxed_positions).max() < 1e-6
    model = tiny_model(hidden=16, layers=2)
    save_checkpoint(model, tmp_path / "base.safetensors", {"data": "test"})
    rc = cli(["finetune", "--from", str(tmp_path / "base.safetensors"), "--data",
              str(tmp_path / "pairs.extxyz"), "--pristine", str(tmp_path / "host.cif"),
              "--out", str(tmp_path / "ft"), "--epochs", "2", "--batch-size", "4"])
    assert rc == 0
    assert (tmp_path / "ft" / "best.md").read_text().startswith("# Model card")
    recorded = json.loads((tmp_path / "ft" / "config.json").read_text())["model"]
    assert recorded["hidden"] == 16 and recorded["layers"] == 2  # the checkpoint's, not 128
    rc = cli(["evaluate", "--model", str(tmp_path / "ft" / "best.safetensors"), "--data",
              str(tmp_path / "pairs.extxyz"), "--pristine", str(tmp_path / "host.cif"),
              "--out-dir", str(tmp_path / "ev")])
    assert rc == 0
    out = capsys.readouterr().out
    assert "overall" in out and "A3" in out
    assert "on 10 pairs (all)" in out  # pairs without a split: all of them, not an error
    with open(tmp_path / "ev" / "evaluation.csv") as f:
        rows = list(csv.DictReader(f))
    overall = next(r for r in rows if r["group"] == "overall")
    dummy = np.mean(np.concatenate([np.linalg.norm(p.relaxed_positions - p.unrelaxed.positions,
                                                   axis=1) for p in pairs]))
    assert float(overall["mae_dummy_all"]) == pytest.approx(dummy, rel=1e-4)
    assert (tmp_path / "ev" / "evaluation.png").stat().st_size > 10_000
    monkeypatch.chdir(tmp_path / "ev")  # without --out-dir: the table only, no files
    before = sorted(p.name for p in (tmp_path / "ev").iterdir())
    assert cli(["evaluate", "--model", str(tmp_path / "ft" / "best.safetensors"), "--data",
                str(tmp_path / "pairs.extxyz"), "--pristine", str(tmp_path / "host.cif")]) == 0
    assert "overall" in capsys.readouterr().out
    assert sorted(p.name for p in (tmp_path / "ev").iterdir()) == before
    rc = cli(["card", str(tmp_path / "ft" / "best.safetensors"), "--data",
              str(tmp_path / "pairs.extxyz"), "--pristine", str(tmp_path / "host.cif")])
    assert rc == 0
    card = (tmp_path / "ft" / "best.md").read_text()
    assert "## Test metrics" in card and "overall" in card
    _, meta = load_checkpoint(tmp_path / "ft" / "best.safetensors")
    assert meta["test_metrics"]["overall"]["dummy_all"] == pytest.approx(dummy, rel=1e-4)
    rc = cli(["train", "--data", str(tmp_path / "nothing.db"), "--out", str(tmp_path / "x")])
    assert rc == 2
    ft = ["finetune", "--from", str(tmp_path / "base.safetensors"), "--data",
          str(tmp_path / "pairs.extxyz"), "--pristine", str(tmp_path / "host.cif"),
          "--epochs", "1", "--batch-size", "4"]
    assert cli(ft + ["--out", str(tmp_path / "n12"), "--max-neighbors", "12"]) == 0
    m12, _ = load_checkpoint(tmp_path / "n12" / "best.safetensors")
    assert m12.max_neighbors == 12 and m12.config.hidden == 16  # graph setting changed
    capsys.readouterr()
    assert cli(ft + ["--out", str(tmp_path / "l5"), "--layers", "5"]) == 2
    assert "only --max-neighbors, --axial-global and --hidden may change" in (
        capsys.readouterr().err)
    assert cli(ft + ["--out", str(tmp_path / "h24"), "--hidden", "24"]) == 2
    assert "must be a multiple of the checkpoint's width 16" in capsys.readouterr().err
    assert cli(ft + ["--out", str(tmp_path / "h32"), "--hidden", "32"]) == 0  # widened
    m32, _ = load_checkpoint(tmp_path / "h32" / "best.safetensors")
    assert m32.config.hidden == 32
    assert json.loads((tmp_path / "h32" / "config.json").read_text())["model"]["hidden"] == 32
    assert "widened from F=16 to F=32" in (tmp_path / "h32" / "best.md").read_text()
    assert cli(ft + ["--out", str(tmp_path / "ax"), "--axial-global"]) == 0
    max_, _ = load_checkpoint(tmp_path / "ax" / "best.safetensors")
    assert max_.config.axial_global and float(max_.layers[0].ax_out.weight.detach().abs().sum()) > 0
    assert json.loads((tmp_path / "ax" / "config.json").read_text())["model"]["axial_global"]
    assert "axial global channel (an extension beyond the paper): yes" in (
        tmp_path / "ax" / "best.md").read_text()


@pytest.mark.slow
def test_ddp_two_processes_with_torchrun(tmp_path):
    """Two CPU processes (gloo) through torchrun train and write one checkpoint."""
    import subprocess
    import sys

    host = small_host(3)
    frames = []
    for p in synthetic_pairs(12):
        frames += [p.unrelaxed, p.relaxed()]
    write(tmp_path / "pairs.extxyz", frames)
    write(tmp_path / "host.cif", host)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
           "--master_port=29517", "-m", "ase_definet.train", "--data",
           str(tmp_path / "pairs.extxyz"), "--pristine", str(tmp_path / "host.cif"),
           "--out", str(tmp_path / "ddp"), "--epochs", "2", "--batch-size", "2",
           "--hidden", "16", "--layers", "2", "--threads", "1",
           "--device", "cpu"]  # gloo, also on a machine with GPUs
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    rows = (tmp_path / "ddp" / "log.csv").read_text().splitlines()
    assert len(rows) == 3  # header + 2 epochs, written by rank 0 only
    load_checkpoint(tmp_path / "ddp" / "best.safetensors")


@pytest.mark.slow
def test_compiled_training_matches_eager(tmp_path):
    """``compile=True`` computes the same gradients (float rounding aside), trains to
    the same losses and saves checkpoints with the plain parameter names (minutes:
    torch.compile)."""
    from ase_definet.train.dataset import collate_samples
    from ase_definet.train.trainer import masked_distance_loss

    train, val = datasets()
    model = tiny_model(hidden=16, layers=2)
    b = collate_samples(train.samples[:3])
    grads = []
    for net in (model, torch.compile(model, dynamic=True)):
        model.zero_grad()
        masked_distance_loss(net(b.graph)[-1], b.target, b.mask).backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    for (name, _), ge, gc in zip(model.named_parameters(), *grads):
        assert torch.allclose(ge, gc, rtol=1e-3, atol=1e-6), name
    eager = Trainer(cfg(tmp_path / "eager", epochs=2), train, val)
    eager.fit()
    compiled = Trainer(cfg(tmp_path / "compiled", epochs=2, compile=True), train, val)
    compiled.fit()
    e = [r["train_loss"] for r in eager.history]
    c = [r["train_loss"] for r in compiled.history]
    assert np.allclose(e, c, rtol=1e-2)
    ckpt, _ = load_checkpoint(tmp_path / "compiled" / "best.safetensors")
    assert not any("_orig_mod" in k for k in ckpt.state_dict())


def test_torchrun_with_more_ranks_than_gpus_is_refused(monkeypatch):
    """A local rank without a GPU of its own gets a clear error, not a CUDA traceback."""
    from ase_definet.train.trainer import _dist_setup

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ValueError, match=r"only 1 visible CUDA device.*--nproc_per_node=1"):
        _dist_setup(torch.device("cuda"))
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert _dist_setup(torch.device("cpu")) == (0, 1, torch.device("cpu"))


def test_material_weights_weigh_the_loss_by_material(tmp_path):
    """Each site's distance counts with its pair's material weight; unnamed materials
    count 1, and no weights leave the plain mean (the default) untouched."""
    from ase_definet.train.dataset import collate_samples
    from ase_definet.train.trainer import masked_distance_loss, site_weights

    pairs = synthetic_pairs(4)
    pairs[1].info["material"] = pairs[3].info["material"] = "hBN"
    ds = PairDataset.from_pairs(pairs, 5.0, 24, progress=False)
    batch = collate_samples(ds.samples)
    pred = batch.graph.positions.double()  # the Dummy: per-site error = displacement
    dist = torch.linalg.norm(pred - batch.target.double(), dim=1)
    w = site_weights(batch, {"hBN": 3.0})
    is_hbn = torch.tensor([i["material"] == "hBN" for i in batch.infos])[batch.graph.batch]
    assert torch.equal(w, torch.where(is_hbn, 3.0, 1.0).to(w.dtype))
    m = batch.mask
    expected = (w[m] * dist[m]).sum() / w[m].sum()
    assert torch.allclose(masked_distance_loss(pred, batch.target.double(), m, w), expected)
    assert site_weights(batch, {}) is None
    assert torch.allclose(masked_distance_loss(pred, batch.target.double(), m, torch.ones_like(w)),
                          masked_distance_loss(pred, batch.target.double(), m))
    # the weighted loss differs from the plain one: the weights reach the loss
    assert not torch.allclose(expected, dist[m].mean())
    train, val = datasets()
    with pytest.raises(ValueError, match=r"material weights name \['hBN'\].*\['MoS2'\]"):
        Trainer(cfg(tmp_path / "u", material_weights={"hBN": 2.0}), train, val)
    with pytest.raises(ValueError, match="positive and finite"):
        Trainer(cfg(tmp_path / "n", material_weights={"MoS2": 0.0}), train, val)
    t = Trainer(cfg(tmp_path / "ok", epochs=1, material_weights={"MoS2": 2.0}), train, val)
    t.fit()
    meta = load_checkpoint(tmp_path / "ok" / "best.safetensors")[1]
    assert meta["training"]["material_weights"] == {"MoS2": 2.0}


def test_cli_material_weights_are_parsed_or_refused():
    from ase_definet.train.cli import parse_weights

    assert parse_weights(["hBN=3", "BP=0.5"]) == {"hBN": 3.0, "BP": 0.5}
    for bad in (["hBN"], ["hBN=x"], ["=2"]):
        with pytest.raises(ValueError, match="MATERIAL=WEIGHT"):
            parse_weights(bad)


def test_input_noise_perturbs_only_training_inputs_and_resumes_exactly(tmp_path):
    from ase_definet.train.dataset import collate_samples
    from ase_definet.train.evaluate import evaluate_model
    from ase_definet.train.trainer import add_input_noise

    train, val = datasets()
    batch = collate_samples([train[i] for i in range(len(train))])
    pos0 = batch.graph.positions.clone()
    assert add_input_noise(batch, 0.0, torch.Generator()) is batch
    noisy = add_input_noise(batch, 0.05, torch.Generator().manual_seed(1))
    again = add_input_noise(batch, 0.05, torch.Generator().manual_seed(1))
    d = noisy.graph.positions - pos0
    assert torch.equal(batch.graph.positions, pos0)  # the cached sample is untouched
    assert torch.equal(noisy.graph.positions, again.graph.positions)  # seeded
    assert d.std().item() == pytest.approx(0.05, rel=0.1) and abs(d.mean().item()) < 0.01
    assert noisy.target is batch.target and noisy.graph.shifts is batch.graph.shifts
    # a noisy run resumes to the same weights, and differs from a clean run
    full = Trainer(cfg(tmp_path / "a", input_noise=0.02), train, val)
    full.fit()
    part = Trainer(cfg(tmp_path / "b", input_noise=0.02, epochs=2), train, val)
    part.fit()
    resumed = Trainer(cfg(tmp_path / "b", input_noise=0.02), train, val)
    assert resumed.try_resume()
    resumed.fit()
    clean = Trainer(cfg(tmp_path / "c"), train, val)
    clean.fit()
    for k, v in full.model.state_dict().items():
        assert torch.equal(v, resumed.model.state_dict()[k]), k
    # validation sees the clean inputs: the logged val MAE is the EMA model's on them
    acc, _ = evaluate_model(full.ema_model(), val, 3, full.device)
    assert acc.mae() == pytest.approx(full.history[-1]["val_mae"], abs=1e-7)
    assert any(not torch.equal(v, clean.model.state_dict()[k])
               for k, v in full.model.state_dict().items() if v.is_floating_point())
    with pytest.raises(ValueError, match="input_noise must be >= 0"):
        Trainer(cfg(tmp_path / "d", input_noise=-0.01), train, val)
