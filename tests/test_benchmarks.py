"""The benchmark scripts run end to end on tiny cases, so their published tables can be
regenerated (the figures themselves come from full runs, not from these tests)."""

from __future__ import annotations

import csv
import importlib.util
from pathlib import Path

import numpy as np
import pytest

from ase_definet import save_checkpoint

from .conftest import tiny_model

ROOT = Path(__file__).resolve().parents[1]


def load(path: Path):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def ckpt(tmp_path):
    return str(save_checkpoint(tiny_model(hidden=16, layers=2, displacement_init=0.02),
                               tmp_path / "m.safetensors"))


def test_benchmark_table_and_csv(tmp_path, ckpt, capsys):
    out = tmp_path / "bench.csv"
    small = str(save_checkpoint(tiny_model(hidden=8, layers=1), tmp_path / "small.safetensors"))
    rows = load(ROOT / "benchmarks" / "benchmark.py").main(
        ["--model", ckpt, small, "--sizes", "3", "2", "--repeats", "1", "--no-teacher",
         "--throughput-structures", "4", "--batch-size", "2", "--threads", "1",
         "--csv", str(out)])
    # two weights in one run, each with its own rows, in the order given
    assert [(r["model"], r["size"]) for r in rows] == [
        (ckpt, "2x2"), (ckpt, "3x3"), (small, "2x2"), (small, "3x3")]
    assert rows[1]["sites"] == 27 and rows[0]["relax_vs_first"] == rows[2]["relax_vs_first"] == 1.0
    # relax = graph + forward, timed separately: under load one repeat of each can come
    # out in either order (the published 64x64 row did), so only a loose bound
    assert all(r["forward_ms"] > 0 and r["relax_ms"] > 0.5 * r["forward_ms"] for r in rows)
    table = capsys.readouterr().out
    assert table.count("batched 8x8 throughput") == 2 and f"## {small}" in table
    with open(out) as fh:
        saved = list(csv.DictReader(fh))
    assert len(saved) == 4 and float(saved[0]["throughput_8x8_per_s"]) > 0
    assert [r["model"] for r in saved] == [ckpt, ckpt, small, small]


def test_model_size_table(tmp_path, ckpt, capsys):
    run = tmp_path / "size_F16_T2"
    run.mkdir()
    (run / "best.safetensors").write_bytes(Path(ckpt).read_bytes())
    with open(run / "log.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["epoch", "train_loss", "val_mae", "val_a3", "val_dummy_mae", "lr",
                    "seconds"])
        w.writerow([1, 0.2, 0.10, 0.3, 0.12, 5e-4, 60.0])
        w.writerow([2, 0.1, 0.08, 0.2, 0.12, 5e-4, 60.0])
        w.writerow([3, 0.1, 0.09, 0.2, 0.12, 5e-4, 60.0])
    out = tmp_path / "sizes.csv"
    load(ROOT / "benchmarks" / "model_size.py").main(
        [str(run), "--threads", "1", "--repeats", "1", "--csv", str(out)])
    with open(out) as fh:
        (row,) = list(csv.DictReader(fh))
    assert row["best_epoch"] == "2" and float(row["val_mae"]) == 0.08
    assert (row["F"], row["T"], row["N"]) == ("16", "2", "24")  # from the checkpoint
    assert float(row["train_min"]) == 3.0 and float(row["forward_ms"]) > 0
    assert float(row["val_a3"]) == 0.2 and float(row["val_dummy"]) == 0.12  # the best epoch
    table = capsys.readouterr().out.splitlines()
    (printed,) = [line.split() for line in table if line.startswith("size_F16_T2")]
    assert float(printed[-2]) == pytest.approx(0.08 / 0.12, abs=0.005)  # MAE / Dummy
    (run / "log.csv").write_text("epoch,val_mae\n")
    with pytest.raises(ValueError, match="no epochs"):
        load(ROOT / "benchmarks" / "model_size.py").main([str(run)])


def test_symmetry_floor_keeps_symmetric_labels_and_projects_the_rest(host):
    from ase.geometry import find_mic

    from ase_definet.core.defects import DefectSpec
    from ase_definet.data.store import Pair
    from ase_definet.train.dataset import PairDataset

    mod = load(ROOT / "benchmarks" / "symmetry_floor.py")
    spec = DefectSpec(vacancies=(1,))  # one vacancy: its point group survives
    unrelaxed = spec.apply(host)
    vec, dist = find_mic(host.positions - host.positions[1], host.cell, pbc=True)
    inward = np.where((dist > 0.1) & (dist < 4.0), -0.05, 0.0)[:, None] * vec
    keep = spec.site_index(len(host))
    symmetric = unrelaxed.positions + inward[keep]  # radial: has the vacancy's symmetry
    rng = np.random.default_rng(1)
    noisy = symmetric + rng.normal(scale=0.02, size=symmetric.shape)
    samples = PairDataset.from_pairs(
        [Pair(unrelaxed, p, host, spec, {"material": "MoS2"}) for p in (symmetric, noisy)],
        6.0, 24, progress=False).samples
    (sym_a, k_a), (sym_b, k_b) = (mod.symmetric_label(s) for s in samples)
    assert k_a == k_b > 1
    m = samples[0].mask
    assert np.allclose(sym_a[m], samples[0].target[m], atol=1e-5)  # no floor
    gap = np.linalg.norm(sym_b[m] - samples[1].target[m], axis=1).mean()
    assert 0.01 < gap < 0.04  # random noise is mostly not symmetric


def test_sliding_mode_measures_a_known_shear(host, tmp_path):
    from ase_definet.core.defects import DefectSpec
    from ase_definet.data.store import Pair
    from ase_definet.train.dataset import PairDataset

    mod = load(ROOT / "benchmarks" / "sliding_mode.py")
    spec = DefectSpec(vacancies=(4,), substitutions={0: "W"})
    unrelaxed = spec.apply(host)
    z = unrelaxed.positions[:, 2]
    top, bottom = mod.halves(z, float(host.positions[:, 2].mean()))
    assert top.sum() and bottom.sum() and (top | bottom).sum() < len(z)  # Mo plane: neither
    relaxed = unrelaxed.positions.copy()
    relaxed[top, :2] += [0.06, 0.0]
    relaxed[bottom, :2] -= [0.06, 0.0]
    pair = Pair(unrelaxed, relaxed, host, spec, {"material": "MoS2", "split": "test"})
    identity = tiny_model(hidden=16, layers=2, displacement_init=0.0)  # predicts the input
    ds = PairDataset.from_pairs([pair], identity.cutoff, identity.max_neighbors)
    (row,) = mod.analyse(identity, ds)
    assert row["slide_true"] == pytest.approx(0.12)
    assert row["slide_pred"] == pytest.approx(0.0, abs=1e-6)
    assert row["slide_err"] == pytest.approx(0.12)
    assert row["mae"] == pytest.approx(row["dummy"], abs=1e-6)
    assert row["mae_exact_slide"] == pytest.approx(0.0, abs=1e-5)
    assert row["mae_no_slide"] == pytest.approx(row["mae"]) and not row["flat"]
    pooled = mod.pooled_ratios([row], "MoS2")
    assert pooled["model"] == pytest.approx(1.0) and pooled["no_slide"] == pytest.approx(1.0)
    assert pooled["exact_slide"] == pytest.approx(0.0, abs=1e-4)
    assert mod.pooled_ratios([row], "InSe")["exact_slide"] == pytest.approx(1.0)


def test_sliding_scan_of_a_stable_crystal_costs_energy():
    from ase.build import bulk

    from ase_definet.core.hosts import get_host
    from ase_definet.data.teacher import get_teacher

    mod = load(ROOT / "benchmarks" / "sliding_mode.py")
    host = bulk("Cu", "fcc", a=3.6, cubic=True) * (2, 2, 2)
    rows = mod.scan(host, get_teacher("emt"), amplitudes=(0.0, 0.1, 0.2), angles=(0.0, 90.0))
    assert [(r["slide"], r["angle"]) for r in rows] == [
        (0.0, 0.0), (0.0, 90.0), (0.1, 0.0), (0.1, 90.0), (0.2, 0.0), (0.2, 90.0)]
    assert rows[0]["dE_meV"] == 0.0 and rows[0]["net_force"] < 1e-6
    assert 0 < rows[2]["dE_meV"] < rows[4]["dE_meV"]  # a minimum: sliding costs energy
    assert 0 < rows[2]["net_force"] < rows[4]["net_force"]
    assert rows[2]["dE_meV"] == pytest.approx(rows[3]["dE_meV"], rel=1e-6)  # cubic: x ~ y
    with pytest.raises(ValueError, match="flat layer"):
        mod.scan(get_host("hBN").pristine(), get_teacher("emt"))


def test_label_noise_relabels_stored_pairs(tmp_path, capsys):
    from ase.build import bulk
    from ase.db import connect

    from ase_definet.core.defects import DefectSpec
    from ase_definet.data.label import relax_fixed_cell
    from ase_definet.data.store import Pair, write_pair
    from ase_definet.data.teacher import get_teacher

    host = bulk("Cu", "fcc", a=3.6, cubic=True) * (2, 2, 2)
    spec = DefectSpec(vacancies=(0,), substitutions={5: "Ag"})
    unrelaxed = spec.apply(host)
    res = relax_fixed_cell(unrelaxed, get_teacher("emt"), fmax=0.01)
    with connect(tmp_path / "p.db") as db:
        write_pair(db, Pair(unrelaxed, res.positions, host, spec,
                            {"config_id": "cu-0", "steps": res.steps, "converged": True,
                             "relaxed_energy": res.energy, "split": "test"}))
    (row,) = load(ROOT / "benchmarks" / "label_noise.py").main(
        ["--pairs", str(tmp_path / "p.db"), "--n", "3", "--rattle", "0.001", "--teacher",
         "emt"])
    assert row["config_id"] == "cu-0" and row["stored_steps"] == res.steps
    assert row["dummy"] > 0.005 and row["mean_dist"] < 0.1 * row["dummy"]
    assert abs(row["dE_meV"]) < 5
    assert "cu-0" in capsys.readouterr().out


def test_teacher_cost_table(capsys):
    from .test_data import cu_host

    cu_host()
    rows = load(ROOT / "benchmarks" / "teacher_cost.py").main(
        ["--hosts", "CuTest", "--teachers", "emt", "--repeats", "2", "--fire-steps", "3"])
    assert rows[0]["atoms"] <= 32 and rows[0]["emt"] > 0 and rows[0]["fire_step"] > 0
    out = capsys.readouterr().out
    assert "CuTest" in out and "1.00x" in out and "FIRE s/step" in out


def test_error_breakdown_bins_and_worst_share(tmp_path, ckpt, capsys):
    mod = load(ROOT / "benchmarks" / "error_breakdown.py")
    err = np.array([0.0, 0.01, 0.01, 0.3])
    dummy = np.array([0.01, 0.03, 0.03, 1.0])
    rows = mod.breakdown(err, dummy)
    assert [r["lo"] for r in rows] == [0.0, 0.02, 0.8]  # empty bins are left out
    assert sum(r["atoms"] for r in rows) == pytest.approx(1.0)
    assert rows[-1]["error_share"] == pytest.approx(0.3 / 0.32)
    assert mod.worst_share(err, 0.25) == pytest.approx(0.3 / 0.32)
    infos = [{"density": "high", "concentration": 0.05}, {"density": "low"}]
    conc = mod.by_concentration(err, dummy, infos, np.array([0, 0, 1, 1]))
    assert conc == {"0.050": (1, pytest.approx(0.01 / 0.04)),
                    "low": (1, pytest.approx(0.31 / 1.03))}
    out = mod.main(["--model", ckpt, "--data", str(ROOT / "data" / "MoS2_low_000.db"),
                    "--split", "test"])
    assert 0 < out["worst"][0.01] <= out["worst"][0.05] <= 1
    assert "worst 1 % of atoms" in capsys.readouterr().out
    assert list(out["by_concentration"]) == ["low"]  # MoS2_low_000 holds low density only
    with pytest.raises(ValueError, match="no pairs of split 'nope'"):
        mod.main(["--model", ckpt, "--data", str(ROOT / "data" / "MoS2_low_000.db"),
                  "--split", "nope"])


def test_floor_counts(ckpt, capsys):
    res = load(ROOT / "benchmarks" / "floor.py").main(
        ["--model", ckpt, "--size", "2", "--repeats", "1"])
    # hidden 16, 2 layers: at least the per-edge F x F matmul of phi_q in every layer
    assert res["layers"] == 2 and res["edges"] > 0
    assert res["matmul_gflop"] * 1e9 >= 2 * 2 * res["edges"] * 16 * 16
    assert res["floor_ms"] > 0 and res["today_ms"] > 0 and res["moved_mb"] > res["weights_mb"]
    assert "floor" in capsys.readouterr().out


@pytest.mark.filterwarnings("ignore:An input array is constant")  # the zero model's spread
def test_uncertainty_user_path_errors_follow_the_permuted_shifted_atoms(tmp_path):
    from dataclasses import replace

    from ase.db import connect

    from ase_definet.core.defects import DefectSpec
    from ase_definet.core.hosts import get_host
    from ase_definet.data.store import Pair, iter_pairs, write_pair

    host = replace(get_host("MoS2"), supercell=(3, 3, 1)).pristine()
    rng = np.random.default_rng(0)
    with connect(tmp_path / "p.db") as db:
        for i in range(4):
            spec = DefectSpec(vacancies=(1 + 2 * i,), substitutions={4 + 3 * i: "W"})
            unrelaxed = spec.apply(host)
            relaxed = unrelaxed.positions + rng.normal(0, 0.05, unrelaxed.positions.shape)
            write_pair(db, Pair(unrelaxed, relaxed, host, spec,
                                {"config_id": f"m-{i}", "converged": True, "split": "test",
                                 "material": "MoS2", "supercell": "3x3"}))
    # a model that predicts no displacement: the error is the input's own displacement
    zero = str(save_checkpoint(tiny_model(displacement_init=0.0), tmp_path / "z.safetensors"))
    bench = load(ROOT / "benchmarks" / "uncertainty_user_path.py")
    pair = next(iter_pairs([tmp_path / "p.db"]))
    row = bench.relax_one(pair, zero, np.random.default_rng(1))
    moved = np.linalg.norm(pair.relaxed_positions - pair.unrelaxed.positions, axis=1)
    assert row["e"].shape == row["u"].shape == (len(pair.unrelaxed),)
    assert np.sort(row["e"]) == pytest.approx(np.sort(moved), abs=1e-5)
    assert not np.allclose(row["e"], moved)  # really permuted
    text = bench.main(["--data", str(tmp_path / "p.db"), "--weights", zero,
                       "--out", str(tmp_path / "u.txt")])
    assert (tmp_path / "u.txt").read_text() == text
    overall = next(line for line in text.splitlines() if line.startswith("overall"))
    assert overall.split()[1:3] == ["4", str(4 * (len(host) - 1))]
    assert "cells=<=36" in text and "material=MoS2" in text


def test_teacher_steps_draws_balanced_hosts_and_summarises_each():
    from types import SimpleNamespace

    mod = load(ROOT / "benchmarks" / "teacher_steps.py")
    pairs = [SimpleNamespace(info={"material": m}) for m in ["MoS2"] * 8 + ["hBN"] * 2]
    drawn = mod.draw(pairs, 50, 3, seed=0)
    assert [p.info["material"] for p in drawn].count("MoS2") == 3
    assert [p.info["material"] for p in drawn].count("hBN") == 2
    assert len(mod.draw(pairs, 4, None, seed=0)) == 4
    rows = [{"material": "MoS2", "steps_unrelaxed": 50, "steps_definet": 10, "reduction": 0.8},
            {"material": "MoS2", "steps_unrelaxed": 40, "steps_definet": 20, "reduction": 0.5},
            {"material": "hBN", "steps_unrelaxed": 100, "steps_definet": 90, "reduction": 0.1}]
    s = mod.summarise(rows)
    assert s["pairs"] == 3 and s["median_reduction"] == 0.5
    assert s["materials"]["MoS2"]["median_reduction"] == pytest.approx(0.65)
    assert s["materials"]["hBN"]["median_steps_definet"] == 90


def test_teacher_steps_floor_starts_from_the_label_with_noise_of_the_asked_size():
    from ase_definet.data.store import iter_pairs

    mod = load(ROOT / "benchmarks" / "teacher_steps.py")
    pairs = list(iter_pairs([ROOT / "data" / "MoS2_low_000.db"], split="test"))[:3]
    starts = mod.noisy_minima(pairs, 0.01, seed=0)
    offsets = np.concatenate([a.positions - p.relaxed_positions
                              for a, p in zip(starts, pairs)])
    rms = np.sqrt((offsets ** 2).sum(axis=1).mean())
    assert rms == pytest.approx(0.01, rel=0.15)
    assert all(a.get_chemical_symbols() == p.unrelaxed.get_chemical_symbols()
               and a is not p.unrelaxed for a, p in zip(starts, pairs))
    assert np.allclose(mod.noisy_minima(pairs, 0.0, seed=0)[0].positions,
                       pairs[0].relaxed_positions)
    with pytest.raises(SystemExit, match="--noise"):
        mod.noisy_minima(pairs, float("nan"), seed=0)
    with pytest.raises(SystemExit):  # noise without a label start is refused, not ignored
        mod.main(["--data", str(ROOT / "data" / "MoS2_low_000.db"), "--noise", "0.01"])


def test_centroid_drift_of_labels_and_of_the_model_with_and_without_the_constraint(ckpt):
    mod = load(ROOT / "benchmarks" / "centroid_drift.py")
    data = str(ROOT / "data" / "MoS2_low_000.db")
    out = mod.main(["--model", ckpt, "--data", data, "--split", "test"])
    assert len(out["label"]) == len(out["off"]) == len(out["on"]) > 0
    assert out["label"].max() < 1e-6  # the teacher's FIRE keeps the centroid
    assert out["on"].max() < 1e-5  # float32 rounding
    assert np.median(out["off"]) > 100 * out["on"].max()  # untrained weights drift
    with pytest.raises(ValueError, match="no pairs of split 'nope'"):
        mod.main(["--model", ckpt, "--data", data, "--split", "nope"])


def test_steps_paired_compares_pair_by_pair(tmp_path):
    def write(name, steps):
        path = tmp_path / name
        with open(path, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["config_id", "steps_unrelaxed", "steps_definet"])
            w.writerows([cid, 50, n] for cid, n in steps.items())
        return str(path)

    a = write("a.csv", {"p1": 10, "p2": 20, "p3": 30, "only_a": 99})
    b = write("b.csv", {"p1": 12, "p2": 15, "p3": 33, "only_b": 1})
    line = load(ROOT / "benchmarks" / "steps_paired.py").main([a, b])
    assert line == ("3 pairs: B - A median +2 steps; totals 60 (B) vs 60 (A); "
                    "B fewer on 1, more on 2")
    with pytest.raises(SystemExit, match="share no config_id"):
        load(ROOT / "benchmarks" / "steps_paired.py").main([a, write("c.csv", {"x": 1})])
