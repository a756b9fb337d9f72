"""Hosts, defect-configuration generators, splits, the pair store and the generator."""

from __future__ import annotations

import logging
from collections import Counter

import numpy as np
import pytest
from ase.build import bulk
from ase.db import connect
from ase.geometry import find_mic

from ase_definet.core.hosts import Host, get_host, host_names, register_host
from ase_definet.data import generate
from ase_definet.data.configs import (
    HIGH_CONCENTRATIONS,
    canonical_key,
    high_density_configs,
    low_density_configs,
)
from ase_definet.data.splits import assign_split
from ase_definet.data.store import iter_pairs, row_to_pair
from ase_definet.data.symmetry import site_permutations, symmetrize_vectors, symmetry_operations

SIZES = {"MoS2": 192, "WSe2": 192, "hBN": 128, "GaSe": 144, "InSe": 144, "BP": 144}


def cu_host() -> Host:
    h = Host(name="CuTest", unit_cell=bulk("Cu", "fcc", a=3.6, cubic=True), supercell=(2, 2, 2),
             substitutions={"Cu": ("Ag", "Au")}, vacancies=("Cu",))
    register_host(h, overwrite=True)
    return h


def test_builtin_hosts():
    assert set(SIZES) <= set(host_names())
    for name, n in SIZES.items():
        p = get_host(name).pristine()
        assert len(p) == n, name
        assert p.cell[2, 2] == pytest.approx(20.0) and p.pbc.all()
    with pytest.raises(ValueError, match="unknown host 'XYZ'; known hosts"):
        get_host("XYZ")


def test_high_density_configs_balanced_and_reproducible():
    host = get_host("MoS2")
    a = high_density_configs(host, 4, seed=3)
    assert len(a) == 20
    per_conc = Counter(round(c.concentration, 4) for c in a)
    assert set(per_conc.values()) == {4} and len(per_conc) == len(HIGH_CONCENTRATIONS)
    allowed = {(16, 34), (42, 74)}
    numbers = host.pristine().numbers
    for c in a:
        assert c.spec.n_defects == max(1, round(c.concentration * 192))
        for site, z in c.spec.substitutions.items():
            assert (numbers[site], z) in allowed
    b = high_density_configs(host, 6, seed=3)
    assert [c.spec for c in a] == [c.spec for c in b[:20]]  # prefix-stable
    assert [c.spec for c in high_density_configs(host, 4, seed=4)] != [c.spec for c in a]


def test_low_density_distinct_up_to_symmetry():
    host = get_host("MoS2")
    configs = low_density_configs(host, 40, seed=0)
    perms = site_permutations(host.pristine())
    keys = [canonical_key(c.spec, perms) for c in configs]
    assert len(set(keys)) == 40
    assert {c.spec.n_defects for c in configs} == {1, 2, 3}
    assert sum(c.spec.n_defects == 1 for c in configs) == 4  # S->Se, Mo->W, V_Mo, V_S
    # a symmetry image of a configuration has the same key
    c = configs[10]
    img = perms[5][list(c.spec.vacancies)]
    from ase_definet import DefectSpec

    moved = DefectSpec(vacancies=tuple(int(i) for i in img), substitutions={
        int(perms[5][s]): z for s, z in c.spec.substitutions.items()})
    assert canonical_key(moved, perms) == keys[10]


def test_site_permutations_preserve_species():
    p = get_host("MoS2").pristine((3, 3, 1))
    perms = site_permutations(p)
    assert perms.shape == (12 * 9, 27)
    assert np.array_equal(perms[0], np.arange(27))
    for row in perms:
        assert sorted(row) == list(range(27))
        assert np.array_equal(p.numbers[row], p.numbers)


def test_symmetrize_vectors_projects_onto_the_symmetric_fields():
    p = get_host("MoS2").pristine((3, 3, 1))
    types = p.numbers.copy()
    types[4] = 0  # a vacancy-like site lowers the symmetry to its point group
    rotations, perms = symmetry_operations(p, types=types)
    assert 1 < len(perms) < 12 * 9
    for rot in rotations:  # Cartesian rotations are orthogonal
        assert np.allclose(rot @ rot.T, np.eye(3), atol=1e-6)
    rng = np.random.default_rng(0)
    v = rng.normal(size=(len(p), 3))
    sym = symmetrize_vectors(v, rotations, perms)
    assert not np.allclose(sym, v)
    assert np.allclose(symmetrize_vectors(sym, rotations, perms), sym)  # a projection
    for rot, perm in zip(rotations, perms):  # invariant under every operation
        moved = np.empty_like(sym)
        moved[perm] = sym @ rot.T
        assert np.allclose(moved, sym, atol=1e-6)
    # the field of displacements away from the special site is already symmetric
    # (beyond half the cell width, 4.79 Å, the nearest image is a tie: left out)
    mic, dist = find_mic(p.positions - p.positions[4], p.cell, pbc=True)
    mic[dist > 4.7] = 0.0
    assert np.allclose(symmetrize_vectors(mic, rotations, perms), mic, atol=1e-5)


def test_splits_are_8_1_1_and_prefix_stable():
    got = [assign_split("MoS2/high/0.05", k, seed=0) for k in range(100)]
    assert Counter(got) == {"train": 80, "val": 10, "test": 10}
    assert got[:37] == [assign_split("MoS2/high/0.05", k, seed=0) for k in range(37)]
    assert got != [assign_split("MoS2/high/0.05", k, seed=1) for k in range(100)]


def test_generate_resume_shards_and_store(tmp_path, monkeypatch):
    cu_host()
    batches = generate.plan_jobs(["CuTest"], n_high_per_conc=2, n_low=0, batch_size=4)
    assert [len(b) for b in batches] == [4, 4, 2]
    out, part = tmp_path / "data", tmp_path / "partial"
    real, calls = generate._label, []

    def dies_at_sixth(args):
        calls.append(1)
        if len(calls) == 6:
            raise KeyboardInterrupt  # the run is killed while labelling pair 6
        return real(args)

    monkeypatch.setattr(generate, "_label", dies_at_sixth)
    with pytest.raises(KeyboardInterrupt):
        generate.run(out, part, batches, teacher="emt", fmax=0.05, steps=200)
    assert sorted(p.name for p in out.glob("*.db")) == ["CuTest_high_000.db"]
    with connect(part / "CuTest_high_001.db") as db:
        assert db.count() == 1  # pair 5 was written, pair 6 was lost
    monkeypatch.setattr(generate, "_label", real)
    generate.run(out, part, batches, teacher="emt", fmax=0.05, steps=200)  # resume
    files = sorted(out.glob("*.db"))
    assert [p.name for p in files] == [f"CuTest_high_00{i}.db" for i in range(3)]
    assert not (part / "CuTest_high_001.db").exists()
    ids = []
    for f in files:
        with connect(f) as db:
            for row in db.select():
                ids.append(row.config_id)
                for key in ("material", "density", "concentration", "split", "teacher",
                            "relax_fmax", "converged", "steps", "relaxed_energy"):
                    assert key in row.key_value_pairs, key
                for key in ("relaxed_positions", "pristine_positions", "pristine_numbers",
                            "site_index", "vacancies"):
                    assert key in row.data, key
                pair = row_to_pair(row)
                assert np.array_equal(pair.spec.apply(pair.pristine).numbers,
                                      pair.unrelaxed.numbers)
                assert row.converged and row.final_fmax < 0.05
                assert row.energy is not None and row.fmax > row.final_fmax
    assert sorted(ids) == [f"CuTest-high-{i:05d}" for i in range(10)]  # no duplicates
    assert len(list(iter_pairs(files, split="train"))) + len(
        list(iter_pairs(files, split="val"))) + len(list(iter_pairs(files, split="test"))) == 10


def test_shards_partition_the_batch_files():
    cu_host()
    batches = generate.plan_jobs(["CuTest"], n_high_per_conc=4, n_low=0, batch_size=3)
    shards = [generate.select_shard(batches, k, 3) for k in range(3)]
    files = [{b[0].file for b in s} for s in shards]
    assert set.union(*files) == {b[0].file for b in batches}
    assert sum(len(f) for f in files) == len(batches)  # disjoint


def test_shard_argument():
    assert generate.parse_shard("1/3") == (1, 3)
    import argparse

    for bad in ("3/3", "a/b", "1"):
        with pytest.raises(argparse.ArgumentTypeError):
            generate.parse_shard(bad)


def test_embed_cluster_into_larger_cell():
    from ase_definet import DefectSpec
    from ase_definet.data.configs import embed

    mos2 = get_host("MoS2")
    small = mos2.pristine()
    spec = DefectSpec(vacancies=(1, 4), substitutions={188: 74})  # across the cell edge
    big_spec = embed(spec, 8, 16, 3)
    big = mos2.pristine((16, 16, 1))
    a = [*spec.vacancies, *spec.substitutions]
    b = [*big_spec.vacancies, *big_spec.substitutions]
    da = small.get_distances(a[0], a, mic=True)
    db = big.get_distances(b[0], b, mic=True)
    assert np.allclose(da, db)  # same cluster geometry
    assert [small[i].symbol for i in a] == [big[i].symbol for i in b]
    assert big_spec.substitutions[b[-1]] == 74


def test_generate_and_summary_cli(tmp_path, capsys):
    from ase_definet.cli import main as cli

    cu_host()
    args = ["generate", "--out", str(tmp_path / "d"), "--materials", "CuTest", "--high", "1",
            "--low", "0", "--teacher", "emt", "--batch-size", "5", "--steps", "300",
            "--fmax", "0.05"]
    assert cli(args) == 0
    assert [p.name for p in (tmp_path / "d").glob("*.db")] == ["CuTest_high_000.db"]
    assert cli(args) == 0  # rerun: nothing to do, nothing duplicated
    with connect(tmp_path / "d" / "CuTest_high_000.db") as db:
        assert db.count() == 5
    capsys.readouterr()
    assert cli(["summary", str(tmp_path / "d")]) == 0
    out = capsys.readouterr().out
    assert "CuTest" in out and out.strip().splitlines()[-1].split()[1:5] == ["3", "1", "1", "5"]
    assert cli(["generate", "--materials", "Nope", "--out", str(tmp_path / "x")]) == 2


def test_summary_verify_recomputes_teacher_forces(tmp_path, capsys):
    from ase_definet.cli import main as cli

    cu_host()
    assert cli(["generate", "--out", str(tmp_path / "d"), "--materials", "CuTest", "--high",
                "1", "--low", "0", "--teacher", "emt", "--batch-size", "5", "--steps", "300",
                "--fmax", "0.05"]) == 0
    capsys.readouterr()
    verify = ["summary", str(tmp_path / "d"), "--verify", "3", "--teacher", "emt",
              "--limit", "0.06"]
    assert cli(verify) == 0
    out = capsys.readouterr().out
    assert "OK: largest force" in out and len(out.split("CuTest_high_000.db")) == 4
    with connect(tmp_path / "d" / "CuTest_high_000.db") as db:  # spoil the labels
        for row in db.select():
            db.update(row.id, data={"relaxed_positions": row.toatoms().positions})
    assert cli(verify[:3] + ["5"] + verify[4:]) == 1  # unrelaxed positions: large forces
    assert "FAILED" in capsys.readouterr().out


@pytest.mark.slow  # two spawned teacher processes: ~12 s of start-up
def test_generate_with_two_worker_processes(tmp_path):
    cu_host()
    batches = generate.plan_jobs(["CuTest"], n_high_per_conc=1, n_low=0, batch_size=5)
    generate.run(tmp_path / "d", tmp_path / "p", batches, workers=2, teacher="emt",
                 fmax=0.05, steps=300)
    with connect(tmp_path / "d" / "CuTest_high_000.db") as db:
        assert sorted(r.config_id for r in db.select()) == [f"CuTest-high-{i:05d}"
                                                            for i in range(5)]


def test_first_derivatives_only_same_gradient_without_a_graph():
    import torch

    from ase_definet.data.teacher import first_derivatives_only

    stock_grad = torch.autograd.grad
    x = torch.linspace(-1.0, 1.0, 7, requires_grad=True)
    energy = (torch.sin(3 * x) * x**2).sum()
    (ref,) = torch.autograd.grad(energy, x, create_graph=True, retain_graph=True)
    assert ref.requires_grad  # a graph of the gradient was built
    with first_derivatives_only():
        (g,) = torch.autograd.grad(energy, x, create_graph=True, retain_graph=True)
    assert not g.requires_grad
    assert torch.equal(g, ref.detach())
    assert torch.autograd.grad is stock_grad  # restored after the block
    with pytest.raises(RuntimeError), first_derivatives_only():
        raise RuntimeError("restored on error too")
    assert torch.autograd.grad is stock_grad
    (again,) = torch.autograd.grad(energy, x, create_graph=True)
    assert again.requires_grad


def test_chgnet_teacher_forces_match_the_stock_calculator():
    pytest.importorskip("chgnet")
    from chgnet.model.dynamics import CHGNetCalculator

    from ase_definet.data.teacher import _chgnet_model, chgnet_calculator, get_teacher

    atoms = get_host("MoS2").pristine()
    del atoms[[3, 50]]
    atoms.rattle(0.05, seed=1)
    ours = atoms.copy()
    ours.calc = chgnet_calculator()
    stock = atoms.copy()
    stock.calc = CHGNetCalculator(model=_chgnet_model(), use_device="cpu")
    assert ours.get_potential_energy() == pytest.approx(stock.get_potential_energy(), abs=1e-5)
    np.testing.assert_allclose(ours.get_forces(), stock.get_forces(), atol=2e-4)
    named = atoms.copy()  # the "chgnet-stock" teacher (summary --verify) is that calculator
    named.calc = get_teacher("chgnet-stock")
    assert named.get_potential_energy() == stock.get_potential_energy()


def test_unconverged_pairs_are_skipped_and_counted(tmp_path, caplog):
    from ase_definet.core.defects import DefectSpec
    from ase_definet.data.store import Pair, write_pair

    host = bulk("Cu", "fcc", a=3.6, cubic=True) * (2, 2, 2)
    spec = DefectSpec(vacancies=(0,))
    unrelaxed = spec.apply(host)
    path = tmp_path / "p.db"
    with connect(path) as db:
        for i, ok in enumerate([True, False, True]):
            write_pair(db, Pair(unrelaxed, unrelaxed.positions + 0.01 * i, host, spec,
                                {"config_id": f"cu-{i}", "converged": ok, "split": "train"}))
    with caplog.at_level(logging.INFO, logger="ase_definet.data.store"):
        ids = [p.info["config_id"] for p in iter_pairs([path], split="train")]
    assert ids == ["cu-0", "cu-2"]
    assert "1 unconverged pair(s) skipped" in caplog.text and str(path) in caplog.text
    assert len(list(iter_pairs([path], converged_only=False))) == 3
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="ase_definet.data.store"):
        assert list(iter_pairs([path], split="val")) == []
    assert "skipped" not in caplog.text  # counted within the selection only


def test_reading_a_missing_pair_file_is_an_error_and_creates_nothing(tmp_path):
    missing = tmp_path / "MoS2_000.db"
    with pytest.raises(FileNotFoundError, match=r"MoS2_000\.db: no such pair file"):
        next(iter_pairs([missing]))
    assert not missing.exists()
