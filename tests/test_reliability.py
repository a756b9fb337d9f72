"""Issue 18: resumes that refuse to lie, non-finite numbers, hostile checkpoints and
files, clear errors, 2D slabs. Every error names the problem and leaves the caller's
atoms and files as they were."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from ase.build import mx2
from ase.io import write
from safetensors.torch import save_file

from ase_definet import (
    DefectSpec,
    DefectStructure,
    DefiNetRelaxer,
    load_checkpoint,
    save_checkpoint,
)
from ase_definet.batch import relax_many
from ase_definet.cli import main as cli
from ase_definet.core.checkpoint import FORMAT, read_metadata
from ase_definet.core.validate import MIN_DISTANCE
from ase_definet.graph.neighbors import neighbor_graph
from ase_definet.train import Trainer

from .conftest import tiny_model
from .test_train import cfg, datasets, synthetic_pairs


@pytest.fixture
def ckpt(tmp_path):
    return str(save_checkpoint(tiny_model(), tmp_path / "tiny.safetensors", {"data": "none"}))


def _raw_checkpoint(path, tensors, config, metadata=None, **extra):
    """A checkpoint file written by hand (no checksum unless given in ``extra``)."""
    meta = {"format": FORMAT, "config": json.dumps(config),
            "metadata": json.dumps(metadata or {}), **extra}
    save_file(tensors, str(path), metadata=meta)
    return path


def _tiny_tensors(**kw):
    model = tiny_model(**kw)
    return {k: v.contiguous() for k, v in model.state_dict().items()}, model.config.to_dict()


# ----------------------------------------------------------------- 3: resumes
def test_resume_with_other_settings_is_refused_and_records_nothing(tmp_path):
    train, val = datasets()
    Trainer(cfg(tmp_path, epochs=1), train, val).fit()
    recorded = (tmp_path / "config.json").read_text()
    last = (tmp_path / "last.pt").read_bytes()
    for change, name in (({"lr": 1e-3}, "lr"), ({"seed": 1}, "seed"),
                         ({"batch_size": 2}, "batch_size")):
        with pytest.raises(ValueError, match=rf"{name}=.*another --out"):
            Trainer(cfg(tmp_path, epochs=2, **change), train, val).try_resume()
    assert (tmp_path / "config.json").read_text() == recorded
    assert (tmp_path / "last.pt").read_bytes() == last
    # other pairs (another --data, or another random split): refused, best not re-selected
    train2, val2 = datasets(seed=1)
    with pytest.raises(ValueError, match="other validation pairs"):
        Trainer(cfg(tmp_path, epochs=2), train, val2).try_resume()
    with pytest.raises(ValueError, match="other training pairs"):
        Trainer(cfg(tmp_path, epochs=2), train2, val).try_resume()
    # the same settings, a longer run and another device: a resume
    t = Trainer(cfg(tmp_path, epochs=2, device="cpu", max_hours=1.0), train, val)
    assert t.try_resume() and t.epoch == 1


def test_cli_resume_takes_the_saved_settings(tmp_path, capsys):
    frames = []
    for p in synthetic_pairs(10):
        frames += [p.unrelaxed, p.relaxed()]
    write(tmp_path / "pairs.extxyz", frames)
    write(tmp_path / "host.cif", synthetic_pairs(1)[0].pristine)
    data = ["--data", str(tmp_path / "pairs.extxyz"), "--pristine", str(tmp_path / "host.cif")]
    out = tmp_path / "run"
    base = ["train", *data, "--out", str(out), "--batch-size", "4", "--hidden", "8",
            "--layers", "1", "--cutoff", "4.0"]
    assert cli([*base, "--epochs", "1", "--lr", "2e-3"]) == 0
    # resumed without repeating the settings: the saved ones are used and recorded
    assert cli(["train", *data, "--out", str(out), "--epochs", "2"]) == 0
    recorded = json.loads((out / "config.json").read_text())
    assert recorded["lr"] == 2e-3 and recorded["epochs"] == 2
    assert recorded["model"]["hidden"] == 8
    before = (out / "config.json").read_text()
    capsys.readouterr()
    assert cli(["train", *data, "--out", str(out), "--epochs", "3", "--lr", "1e-3"]) == 2
    assert "lr=0.002 (now 0.001)" in capsys.readouterr().err
    assert (out / "config.json").read_text() == before


def test_kill_after_a_log_row_leaves_no_duplicate_epoch(tmp_path, monkeypatch):
    train, val = datasets()
    calls = []
    real = Trainer._save_atomic

    def killed_on_second(self, obj, path):
        calls.append(path)
        if len(calls) == 2:  # epoch 2: its log row is written, last.pt is not
            raise KeyboardInterrupt
        real(self, obj, path)

    monkeypatch.setattr(Trainer, "_save_atomic", killed_on_second)
    with pytest.raises(KeyboardInterrupt):
        Trainer(cfg(tmp_path), train, val).fit()
    monkeypatch.setattr(Trainer, "_save_atomic", real)
    resumed = Trainer(cfg(tmp_path), train, val)
    assert resumed.try_resume() and resumed.epoch == 1
    resumed.fit()
    with open(tmp_path / "log.csv") as f:
        epochs = [int(r["epoch"]) for r in csv.DictReader(f)]
    assert epochs == [1, 2, 3]


def test_corrupt_last_pt_is_refused_and_kept(tmp_path):
    train, val = datasets()
    (tmp_path / "last.pt").write_bytes(b"PK\x03\x04 not a torch file")
    with pytest.raises(ValueError, match=r"last.pt is corrupt or unreadable"):
        Trainer(cfg(tmp_path), train, val).try_resume()
    assert (tmp_path / "last.pt").read_bytes() == b"PK\x03\x04 not a torch file"


def test_corrupt_graph_cache_is_rebuilt(tmp_path):
    from ase.db import connect

    from ase_definet.data.store import write_pair
    from ase_definet.train.dataset import load_dataset

    with connect(tmp_path / "pairs.db") as db:
        for p in synthetic_pairs(3):
            p.info["converged"] = True
            write_pair(db, p)
    first = load_dataset([tmp_path / "pairs.db"], 5.0, 24, tmp_path / "cache", progress=False)
    (cache,) = (tmp_path / "cache").iterdir()
    cache.write_bytes(cache.read_bytes()[:100])
    again = load_dataset([tmp_path / "pairs.db"], 5.0, 24, tmp_path / "cache", progress=False)
    assert len(again) == len(first) == 3
    assert np.array_equal(again[0].target, first[0].target)


# ----------------------------------------------------------------- 4: non-finite
@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_non_finite_positions_are_refused(host, spec, model, value):
    bad = host.copy()
    bad.positions[3, 1] = value
    before = bad.positions.copy()
    with pytest.raises(ValueError, match=r"non-finite .*atom 3"):
        DefiNetRelaxer(bad, defects=spec, model=model, logfile=None)
    defective = DefectSpec.from_any(spec).apply(host)
    defective.positions[2, 0] = value
    with pytest.raises(ValueError, match=r"non-finite .*atom 2"):
        DefiNetRelaxer(defective, pristine=host, model=model, logfile=None)
    with pytest.raises(ValueError, match=r"item 1: .*non-finite"):
        relax_many([(host, spec), (bad, spec)], model=model, progress=False)
    with pytest.raises(ValueError, match=r"non-finite"):
        DefiNetRelaxer(defective, model=model, logfile=None)  # host auto-detection
    assert np.array_equal(bad.positions, before, equal_nan=True)
    cell = host.copy()
    cell.cell[2, 2] = value
    with pytest.raises(ValueError, match=r"non-finite .*cell"):
        DefectStructure.from_host(cell, spec)


def test_cli_non_finite_input_exits_2_and_writes_nothing(tmp_path, host, ckpt, capsys):
    bad = host.copy()
    bad.positions[0, 0] = np.nan
    write(tmp_path / "host.extxyz", bad)
    out = tmp_path / "out.extxyz"
    assert cli(["relax", str(tmp_path / "host.extxyz"), "--vacancies", "3", "-o", str(out),
                "--model", ckpt, "-q"]) == 2
    assert "non-finite" in capsys.readouterr().err and not out.exists()


def _data_offset(path) -> int:
    return 8 + int.from_bytes(path.read_bytes()[:8], "little")


def test_corrupted_weights_are_refused(tmp_path, host, ckpt, capsys):
    path = tmp_path / "tiny.safetensors"
    raw = bytearray(path.read_bytes())
    start = _data_offset(path)
    raw[start + 1000:start + 5096] = b"\xff" * 4096  # NaN float32s in the tensor data
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="checksum"):
        load_checkpoint(bad)
    write(tmp_path / "host.cif", host)
    out = tmp_path / "out.cif"
    assert cli(["relax", str(tmp_path / "host.cif"), "--vacancies", "3", "-o", str(out),
                "--model", str(bad), "-q"]) == 2
    assert "checksum" in capsys.readouterr().err and not out.exists()
    # an older file without a checksum: its tensors are still checked for finiteness
    tensors, config = _tiny_tensors()
    tensors["global_scalar"][0] = float("nan")
    old = _raw_checkpoint(tmp_path / "old.safetensors", tensors, config)
    with pytest.raises(ValueError, match=r"non-finite .*global_scalar"):
        load_checkpoint(old)
    tensors["global_scalar"][0] = 0.0
    good = _raw_checkpoint(tmp_path / "old_ok.safetensors", tensors, config)
    assert load_checkpoint(good)[0].config.hidden == 32  # no checksum: still loads


def test_non_finite_prediction_is_refused_before_any_output(tmp_path, host, capsys):
    model = tiny_model()
    with torch.no_grad():  # finite weights whose output overflows float32
        for layer in model.layers:
            layer.coord_q[-1].bias.fill_(3e38)
            layer.coord_q[-1].weight.fill_(3e38)
    path = save_checkpoint(model, tmp_path / "overflow.safetensors")
    relaxer = DefiNetRelaxer(host, defects={"vacancies": [3]}, model=model, logfile=None)
    with pytest.raises(ValueError, match="non-finite coordinates"):
        relaxer.run()
    with pytest.raises(ValueError, match="non-finite coordinates"):
        relax_many([(host, {"vacancies": [3]})], model=model, progress=False)
    write(tmp_path / "host.cif", host)
    traj = tmp_path / "t.traj"
    write(traj, [host, host])
    old = traj.read_bytes()
    out = tmp_path / "out.extxyz"
    rc = cli(["relax", str(tmp_path / "host.cif"), "--vacancies", "3", "-o", str(out),
              "--model", str(path), "-q", "--trajectory", str(traj)])
    assert rc == 2 and "non-finite coordinates" in capsys.readouterr().err
    assert not out.exists() and traj.read_bytes() == old  # the old trajectory is intact
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "host.cif", "overflow.safetensors", "t.traj"]


def test_saved_checkpoints_carry_a_checksum(tmp_path, ckpt):
    from safetensors import safe_open

    with safe_open(ckpt, framework="pt") as f:
        digest = f.metadata()["sha256"]
    assert len(digest) == 64
    assert load_checkpoint(ckpt)[0].config.hidden == 32


# ----------------------------------------------------------------- 5: metadata bounds
@pytest.mark.parametrize("change, msg", [
    ({"hidden": 40000}, "hidden"),
    ({"cutoff": 1e4}, "cutoff"),
    ({"cutoff": float("nan")}, "cutoff"),
    ({"max_neighbors": 10**9}, "max_neighbors"),
    ({"layers": 10**6}, "layers"),
    ({"n_rbf": 0}, "n_rbf"),
    ({"refine": 1000}, "refine"),
    ({"elements": [0, 500]}, "elements"),
    ({"hidden": "wide"}, "hidden"),
])
def test_insane_metadata_is_refused_before_building(tmp_path, monkeypatch, change, msg):
    tensors, config = _tiny_tensors()
    path = _raw_checkpoint(tmp_path / "m.safetensors", tensors, {**config, **change})

    def no_build(*a, **k):
        raise AssertionError("the model was built before the metadata was checked")

    monkeypatch.setattr("ase_definet.core.checkpoint.DefiNet", no_build)
    with pytest.raises(ValueError, match=msg):
        load_checkpoint(path)
    with pytest.raises(ValueError, match=msg):
        read_metadata(path)


def test_metadata_that_does_not_fit_the_tensors_is_refused(tmp_path, monkeypatch):
    tensors, config = _tiny_tensors()
    for change, msg in (({"hidden": 64}, r"tensor element_embedding.weight has shape \(94, 32\)"),
                        ({"layers": 4}, "layers=4, but the file holds 3"),
                        ({"n_rbf": 16}, r"tensor layers.0.msg_rbf.weight has shape \(96, 32\)"),
                        ({"refine": 1}, "refine=1, but the file holds 0"),
                        ({"axial_global": True}, "axial_global"),
                        ({"elements": [16, 42]},
                         r"tensor element_embedding.weight .* needs \(2, 32\)")):
        path = _raw_checkpoint(tmp_path / "m.safetensors", tensors, {**config, **change})
        with pytest.raises(ValueError, match=f"weights do not fit the saved config: {msg}"):
            load_checkpoint(path)
    wrong = dict(tensors)
    wrong["marker_embedding.weight"] = torch.zeros(5, 32)
    path = _raw_checkpoint(tmp_path / "w.safetensors", wrong, config)
    with pytest.raises(ValueError, match=r"marker_embedding.weight.*\(5, 32\).*\(3, 32\)"):
        load_checkpoint(path)
    wrong = {**tensors, "layers.1.V.weight": torch.zeros(32, 16)}  # found once built
    path = _raw_checkpoint(tmp_path / "w.safetensors", wrong, config)
    with pytest.raises(ValueError, match=r"layers.1.V.weight has shape \(32, 16\)"):
        load_checkpoint(path)
    for drop in ("config", "metadata", "format"):
        meta = {"format": FORMAT, "config": json.dumps(config), "metadata": "{}"}
        del meta[drop]
        save_file(tensors, str(tmp_path / "k.safetensors"), metadata=meta)
        with pytest.raises(ValueError, match=drop if drop != "format" else "format"):
            load_checkpoint(tmp_path / "k.safetensors")
    meta = {"format": FORMAT, "config": "{not json", "metadata": "{}"}
    save_file(tensors, str(tmp_path / "j.safetensors"), metadata=meta)
    with pytest.raises(ValueError, match="config"):
        load_checkpoint(tmp_path / "j.safetensors")


def test_atoms_closer_than_the_minimum_distance_are_refused(host, model):
    dense = host.copy()
    dense.positions[1] = dense.positions[0] + [0.1, 0.0, 0.0]
    with pytest.raises(ValueError, match=rf"atoms 0 and 1 .*0\.10 Å apart.*{MIN_DISTANCE}"):
        DefectStructure.from_host(dense, {"vacancies": [5]})
    # a defective structure whose atom 1 sits 0.2 Å from atom 0 (within the tolerance
    # of its own site): refused before the graph
    defective = host.copy()
    defective.positions[1] = defective.positions[0] + [0.0, 0.2, 0.0]
    with pytest.raises(ValueError, match=r"0.20 Å apart"):
        DefiNetRelaxer(defective, pristine=host, model=model, logfile=None, tolerance=3.0)
    assert np.array_equal(defective.positions[1], host.positions[0] + [0.0, 0.2, 0.0])


# ----------------------------------------------------------------- 6: clear errors
def test_spec_as_numpy_array_and_self_substitution(host):
    s = DefectStructure.from_host(host, {"vacancies": np.array([4, 10]),
                                         "substitutions": {np.int64(0): "W"}})
    assert s.spec.vacancies == (4, 10) and s.spec.substitutions == {0: 74}
    assert DefectSpec.from_any({"vacancies": np.array(3)}).vacancies == (3,)
    with pytest.raises(ValueError, match=r"site 0 is Mo already"):
        DefectStructure.from_host(host, {"substitutions": {0: "Mo"}})
    with pytest.raises(ValueError, match="must be an integer"):
        DefectSpec.from_any({"vacancies": np.array([1.5])})


def test_cli_output_errors_before_any_work(tmp_path, host, ckpt, capsys):
    write(tmp_path / "host.cif", host)
    args = ["relax", str(tmp_path / "host.cif"), "--vacancies", "3", "--model", ckpt, "-q"]
    assert cli([*args, "-o", str(tmp_path / "o.xyz"), "--format", "nonsense"]) == 2
    err = capsys.readouterr().err
    assert "unknown output format 'nonsense'" in err and "extxyz" in err
    (tmp_path / "dir").mkdir()
    assert cli([*args, "-o", str(tmp_path / "dir")]) == 2
    assert "is a directory" in capsys.readouterr().err
    assert cli([*args, "-o", str(tmp_path / "no" / "such" / "out.cif")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert cli([*args, "-o", str(tmp_path / "out.unknownext")]) == 2
    assert "--format" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dir", "host.cif", "tiny.safetensors"]


# ----------------------------------------------------------------- 7: 2D slabs
def test_2d_slab_without_a_third_cell_vector(host, model):
    slab = mx2("MoS2", kind="2H", a=3.19, thickness=3.13) * (3, 3, 1)
    assert slab.cell.lengths()[2] == 0 and slab.pbc.tolist() == [True, True, False]
    boxed = slab.copy()
    boxed.cell[2] = [0, 0, 20.0]
    a = neighbor_graph(slab.positions, slab.cell[:], slab.pbc, 5.0, 24)
    b = neighbor_graph(boxed.positions, boxed.cell[:], boxed.pbc, 5.0, 24)
    assert np.array_equal(a[0], b[0]) and np.allclose(a[1], b[1])
    spec = {"vacancies": [4], "substitutions": {0: "W"}}
    r = DefiNetRelaxer(slab, defects=spec, model=model, logfile=None)
    r.run()
    assert np.isfinite(r.atoms.positions).all() and r.atoms.cell.lengths()[2] == 0
    ref = DefiNetRelaxer(boxed, defects=spec, model=model, logfile=None)
    ref.run()
    assert np.allclose(r.atoms.positions, ref.atoms.positions, atol=1e-5)
    defective = DefectSpec.from_any(spec).apply(slab)
    p = DefiNetRelaxer(defective, pristine=slab, model=model, logfile=None)
    p.run()
    assert np.allclose(defective.positions, ref.atoms.positions, atol=1e-5)
    flat = slab.copy()
    flat.cell[1] = [0, 0, 0]  # a periodic direction still needs its vector
    with pytest.raises(ValueError, match="degenerate"):
        DefectStructure.from_host(flat, spec)
