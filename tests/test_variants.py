"""The generator's axes of variety: strained and PBE lattices, other supercells, low
density for every host."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.db import connect

from ase_definet.core.hosts import Host, get_host, host_names, register_host
from ase_definet.data import generate
from ase_definet.data.batchfiles import BatchLock, PlanConflict
from ase_definet.data.configs import high_density_configs, low_density_configs
from ase_definet.data.variants import (
    PBE_LATTICE,
    SIZE_RANGE,
    Lattice,
    draw_strain,
    pbe_strain,
    relaxed_unit_cell,
    supercell_sizes,
)


def cu_host() -> Host:
    h = Host(name="CuTest", unit_cell=bulk("Cu", "fcc", a=3.6, cubic=True), supercell=(2, 2, 1),
             substitutions={"Cu": ("Ag",)}, vacancies=("Cu",))
    register_host(h, overwrite=True)
    return h


def test_original_axis_is_the_sequence_of_earlier_releases():
    host = get_host("MoS2")
    a = high_density_configs(host, 2)
    b = high_density_configs(host, 2, axis="original")
    assert [c.spec for c in a] == [c.spec for c in b]
    assert a[0].config_id == "MoS2-high-00000" and a[0].lattice.repeat == (8, 8)
    s = high_density_configs(host, 2, axis="strain")
    assert s[0].config_id == "MoS2-strain-high-00000"
    assert [c.spec for c in s] != [c.spec for c in a]  # its own random stream


def test_strain_axis_spans_the_range_and_cycles_the_modes():
    rng = np.random.default_rng(0)
    strains = [draw_strain(rng, k, 0.04) for k in range(300)]
    modes = Counter("biaxial" if x == y else "x" if y == 0 else "y" for x, y in strains)
    assert modes == {"biaxial": 100, "x": 100, "y": 100}
    values = np.array([max(s, key=abs) for s in strains])
    assert values.min() < -0.035 and values.max() > 0.035 and np.abs(values).max() <= 0.04
    assert all(s != (0.0, 0.0) for s in strains)
    host = get_host("BP")
    configs = high_density_configs(host, 3, axis="strain", max_strain=0.02)
    assert len({c.lattice.strain for c in configs}) == len(configs)
    assert all(max(map(abs, c.lattice.strain)) <= 0.02 for c in configs)
    # prefix-stable: the lattice of a configuration does not depend on the plan size
    more = high_density_configs(host, 5, axis="strain", max_strain=0.02)
    assert [c.lattice for c in more[:15]] == [c.lattice for c in configs]


def test_pbe_lattice_is_table_1_of_the_paper():
    for name in host_names():
        if name not in PBE_LATTICE:
            continue
        unit = get_host(name).unit_cell
        ex, ey = pbe_strain(name, unit)
        lat = Lattice("pbe", (ex, ey), (1, 1))
        a, b = lat.strained_cell(unit).lengths()[:2]
        assert (a, b) == pytest.approx(PBE_LATTICE[name], abs=1e-4)
    assert pbe_strain("BP", get_host("BP").unit_cell)[1] > 0.07  # armchair 7 % short
    with pytest.raises(ValueError, match="no PBE lattice for 'CuTest'"):
        pbe_strain("CuTest", cu_host().unit_cell)


def test_size_axis_covers_5_to_10_without_the_default():
    sizes = supercell_sizes((8, 8))
    assert (8, 8) not in sizes and (5, 5) in sizes and (10, 10) in sizes and (6, 8) in sizes
    assert all(SIZE_RANGE[0] <= n <= SIZE_RANGE[1] for s in sizes for n in s)
    configs = high_density_configs(get_host("InSe"), 4, axis="size")
    for c in configs:
        n_sites = 4 * c.lattice.repeat[0] * c.lattice.repeat[1]
        assert c.spec.n_defects == max(1, round(c.concentration * n_sites))
        assert max(c.spec.defect_sites) < n_sites
    with pytest.raises(ValueError, match="size axis is high density only"):
        low_density_configs(get_host("InSe"), 3, axis="size")


def test_low_density_for_every_builtin_host():
    for name in ("hBN", "GaSe", "InSe", "BP"):
        configs = low_density_configs(get_host(name), 6)
        assert {c.spec.n_defects for c in configs} <= {1, 2, 3}
        assert configs[0].config_id == f"{name}-low-00000"


def test_relaxed_unit_cell_is_relaxed_at_the_strained_lattice():
    unit = bulk("Cu", "fcc", a=3.6, cubic=True)
    unit.positions[1] += [0.1, 0.0, 0.05]
    before = unit.positions.copy()
    at = relaxed_unit_cell(unit, (0.02, -0.01), EMT(), fmax=1e-3)
    assert np.array_equal(unit.positions, before)  # the input is untouched
    assert at.cell.lengths()[:2] == pytest.approx([3.6 * 1.02, 3.6 * 0.99])
    at.calc = EMT()
    assert np.linalg.norm(at.get_forces(), axis=1).max() < 1e-3


def test_generate_strain_and_size_axes_record_their_lattice(tmp_path):
    cu_host()
    batches = generate.plan_jobs(["CuTest"], 0, 0, batch_size=4,
                                 counts={("strain", "low"): 3, ("size", "high"): 1})
    names = sorted({b[0].file for b in batches})
    assert names == ["CuTest_size_high_000.db", "CuTest_size_high_001.db",
                     "CuTest_strain_low_000.db"]
    strain = [b for b in batches if "strain" in b[0].file]
    size = [b for b in batches if "size" in b[0].file]
    generate.run(tmp_path / "d", tmp_path / "p", strain, teacher="emt", fmax=0.05, steps=300)
    # the size axis's cells are large (up to 10x10 repetitions): a few steps suffice here
    generate.run(tmp_path / "s", tmp_path / "p", size, teacher="emt", fmax=0.05, steps=2)
    with connect(tmp_path / "d" / "CuTest_strain_low_000.db") as db:
        rows = list(db.select())
    assert len(rows) == 3
    for r in rows:
        assert r.axis == "strain" and r.supercell == "2x2"
        assert r.lattice_a == pytest.approx(3.6 * (1 + r.strain_xx))
        assert r.lattice_b == pytest.approx(3.6 * (1 + r.strain_yy))
        cell = r.toatoms().cell.lengths()
        assert cell[:2] == pytest.approx([2 * r.lattice_a, 2 * r.lattice_b])
        assert np.allclose(r.data["pristine_positions"].max(axis=0)[:2] < cell[:2], True)
    from ase_definet.data.summary import summarize

    table = summarize(sorted((tmp_path / "d").glob("*.db")) + sorted((tmp_path / "s").glob("*.db")))
    rows = {tuple(line.split()[:2]): line.split() for line in table.splitlines()[1:-1]}
    assert rows[("CuTest", "strain/low")][5] == "3"  # the axis is a group of the summary
    assert ("CuTest", "size/high") in rows
    with connect(tmp_path / "s" / "CuTest_size_high_000.db") as db:
        sizes = {r.supercell for r in db.select()}
    assert sizes and all(s != "2x2" for s in sizes)


# ------------------------------------------------------------ concurrency and identity
def _slow_label(args):
    import time

    time.sleep(0.02)  # widen the window in which two runs could collide
    return _REAL_LABEL(args)


_REAL_LABEL = generate._label


def _run_plan(out, part, shard=(0, 1)):
    cu_host()
    batches = generate.select_shard(
        generate.plan_jobs(["CuTest"], n_high_per_conc=3, n_low=0, batch_size=3), *shard)
    generate.run(out, part, batches, teacher="emt", fmax=0.05, steps=300,
                 identity={"seed": 0, "batch_size": 3})


def _all_ids(out):
    ids = []
    for f in sorted(out.glob("*.db")):
        with connect(f) as db:
            ids += [r.config_id for r in db.select()]
    return ids


@pytest.mark.parametrize("shards", [((0, 1), (0, 1)), ((0, 2), (1, 2))])
def test_concurrent_generators_label_every_pair_exactly_once(tmp_path, monkeypatch, shards):
    import multiprocessing as mp

    cu_host()
    monkeypatch.setattr(generate, "_label", _slow_label)
    out, part = tmp_path / "d", tmp_path / "p"
    ctx = mp.get_context("fork")
    procs = [ctx.Process(target=_run_plan, args=(out, part, s)) for s in shards]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0, 0]
    if shards[0] == shards[1]:
        _run_plan(out, part)  # the plan is whole now: nothing left to do
    ids = _all_ids(out)
    assert sorted(ids) == [f"CuTest-high-{i:05d}" for i in range(15)]  # each exactly once
    assert not list(part.glob("*.db"))


def test_rerun_with_other_settings_is_refused(tmp_path):
    from ase_definet.cli import main as cli

    cu_host()
    args = ["generate", "--out", str(tmp_path / "d"), "--materials", "CuTest", "--high", "1",
            "--low", "0", "--teacher", "emt", "--batch-size", "5", "--steps", "300",
            "--fmax", "0.05"]
    assert cli(args) == 0
    assert cli(args[:-6] + ["--batch-size", "2"] + args[-4:]) == 2  # duplicates otherwise
    assert cli(args + ["--seed", "3"]) == 2  # another plan, silently kept otherwise
    assert _all_ids(tmp_path / "d") == [f"CuTest-high-{i:05d}" for i in range(5)]
    (tmp_path / "d" / "plan.json").unlink()  # a folder of an older release: contents decide
    with pytest.raises(PlanConflict, match="other defects than this plan"):
        generate.run(tmp_path / "d", tmp_path / "p",
                     generate.plan_jobs(["CuTest"], 1, 0, seed=3, batch_size=5), teacher="emt")


def test_complete_is_read_from_the_file_and_larger_plans_extend(tmp_path):
    cu_host()
    out, part = tmp_path / "d", tmp_path / "p"
    small = generate.plan_jobs(["CuTest"], 1, 0, batch_size=4)  # files of 4 and 1 configs
    generate.run(out, part, small, teacher="emt", fmax=0.05, steps=300)
    with connect(out / "CuTest_high_000.db") as db:  # a pair lost from a "complete" file
        db.delete([next(db.select()).id])
    big = generate.plan_jobs(["CuTest"], 2, 0, batch_size=4)  # 10 configs: 4, 4, 2
    generate.run(out, part, big, teacher="emt", fmax=0.05, steps=300)
    assert sorted(_all_ids(out)) == [f"CuTest-high-{i:05d}" for i in range(10)]
    with connect(out / "CuTest_high_001.db") as db:
        assert db.count() == 4


def _warm_started(tmp_path, n_high: int = 0, displacement: float = 0.01):
    """Label a Cu plan (``n_high`` high-density, 10 strained low-density configurations)
    with EMT, low-density training pairs warm-started from a tiny model; returns
    (weights path, batches)."""
    from ase_definet.core.checkpoint import save_checkpoint

    from .conftest import tiny_model

    cu_host()
    weights = tmp_path / "tiny.safetensors"
    save_checkpoint(tiny_model(displacement_init=displacement), weights)
    batches = generate.plan_jobs(["CuTest"], n_high, 0, batch_size=10,
                                 counts={("strain", "low"): 10})
    generate.run(tmp_path / "d", tmp_path / "p", batches, teacher="emt", fmax=0.05,
                 steps=300, warm=generate.WarmStart(str(weights), ("low",)))
    return weights, batches


def test_warm_started_labels_record_how_they_were_made(tmp_path):
    weights, batches = _warm_started(tmp_path, n_high=1)
    with connect(tmp_path / "d" / "CuTest_strain_low_000.db") as db:
        warm = list(db.select())
    assert "train" in {r.split for r in warm} and {r.split for r in warm} - {"train"}
    with connect(tmp_path / "d" / "CuTest_high_000.db") as db:
        cold = list(db.select())
    assert {r.label_start for r in warm if r.split == "train"} == {"prediction"}
    assert all(r.start_model.startswith(f"{weights} sha256:") for r in warm
               if r.split == "train")
    # val and test pairs stay cold: evaluating the start model on them is unbiased
    assert {r.label_start for r in warm if r.split != "train"} <= {"unrelaxed"}
    assert {r.label_start for r in cold} == {"unrelaxed"}
    for r in warm:  # the row's energy is the teacher's at the unrelaxed structure
        at = r.toatoms()
        at.calc = EMT()
        assert at.get_potential_energy() == pytest.approx(r.energy, abs=1e-6)
        assert r.converged and r.final_fmax < 0.05
    # --warm-materials: hosts left out of the warm start are labelled cold
    generate.run(tmp_path / "d2", tmp_path / "p2", batches, teacher="emt", fmax=0.05,
                 steps=300, warm=generate.WarmStart(str(weights), materials=("MoS2",)))
    with connect(tmp_path / "d2" / "CuTest_strain_low_000.db") as db:
        assert {r.label_start for r in db.select()} == {"unrelaxed"}


def test_splits_first_labels_only_those_and_the_batch_completes_later(tmp_path):
    cu_host()
    out, part = tmp_path / "d", tmp_path / "p"
    batches = generate.plan_jobs(["CuTest"], 0, 0, batch_size=10, counts={("strain", "low"): 10})
    planned = {j.config.config_id: j.split for j in batches[0]}
    generate.run(out, part, batches, teacher="emt", fmax=0.05, steps=300,
                 splits=("test", "val"))
    assert not list(out.glob("*.db"))  # not whole: stays partial
    with connect(part / "CuTest_strain_low_000.db") as db:
        first = {r.config_id: r.split for r in db.select()}
    assert first and set(first.values()) <= {"test", "val"}
    assert first == {k: v for k, v in planned.items() if v != "train"}
    generate.run(out, part, batches, teacher="emt", fmax=0.05, steps=300,
                 splits=("test", "val"))  # nothing of these splits left: a no-op
    generate.run(out, part, batches, teacher="emt", fmax=0.05, steps=300)
    assert sorted(_all_ids(out)) == sorted(planned)  # each exactly once, batch moved
    assert not list(part.glob("*.db"))


def test_relabel_makes_warm_started_pairs_cold_and_copies_the_rest(tmp_path):
    from ase_definet.data.label import relax_fixed_cell
    from ase_definet.data.relabel import relabel_file
    from ase_definet.data.store import iter_pairs
    from ase_definet.data.teacher import teacher_version

    _warm_started(tmp_path, displacement=0.05)
    path = tmp_path / "d" / "CuTest_strain_low_000.db"
    before = {p.info["config_id"]: p for p in iter_pairs([path])}
    warm = {k for k, p in before.items() if p.info["label_start"] == "prediction"}
    assert warm and set(before) - warm
    from ase_definet.data.summary import summarize

    assert summarize([path]).splitlines()[-1].split()[-1] == str(len(warm))  # warm count
    # a generator holding the batch lock: the file is left alone
    lock = BatchLock(path.with_name(f"{path.name}.batch-lock"))
    assert lock.acquire()
    assert relabel_file(path, EMT(), teacher_version("emt"), progress=False) == -1
    lock.release()
    with pytest.raises(ValueError, match="not by 'CHGNet'"):  # the wrong teacher
        relabel_file(path, EMT(), "CHGNet", progress=False)
    assert {p.info["config_id"]: p.info for p in iter_pairs([path])} == {
        k: p.info for k, p in before.items()}  # unchanged after the failure
    assert relabel_file(path, EMT(), teacher_version("emt"), ["Other"], progress=False) == 0
    assert relabel_file(path, EMT(), teacher_version("emt"), progress=False) == len(warm)
    after = {p.info["config_id"]: p for p in iter_pairs([path])}
    assert list(after) == list(before)  # every pair, in order
    for k, p in after.items():
        old = before[k]
        assert p.info["label_start"] == "unrelaxed" and "start_model" not in p.info
        assert np.array_equal(p.unrelaxed.positions, old.unrelaxed.positions)
        if k in warm:
            cold = relax_fixed_cell(old.unrelaxed, EMT(), fmax=0.05, steps=1000)
            assert np.allclose(p.relaxed_positions, cold.positions, atol=1e-8)
            assert p.info["relabelled"].startswith("cold; first warm-started from ")
            assert p.info["steps"] == cold.steps
        else:
            assert p.info == old.info
            assert np.array_equal(p.relaxed_positions, old.relaxed_positions)
    assert relabel_file(path, EMT(), teacher_version("emt"), progress=False) == 0
    assert summarize([path]).splitlines()[-1].split()[-1] == "0"
    from ase_definet.cli import main as cli

    assert cli(["relabel", str(path), "--teacher", "emt"]) == 0  # nothing left to do
