"""Training pairs from relaxation runs: VASP files (vasprun.xml, OUTCAR, POSCAR/CONTCAR)
and ASE trajectories, matched to their host, skipped with a reason when unusable, and
fine-tuned on end to end."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from ase.db import connect
from ase.geometry import find_mic
from ase.io import read, write

from ase_definet.cli import main as cli
from ase_definet.core.checkpoint import read_metadata
from ase_definet.data.runs import read_run, read_runs
from ase_definet.data.store import iter_pairs

from .vasp_files import (
    cu_host,
    defect_runs,
    defective,
    relaxation,
    write_outcar,
    write_vasprun,
)


@pytest.fixture(scope="module")
def runs():
    """Six EMT relaxations of defective 2x2x2 Cu (32 sites), as frame lists."""
    return defect_runs(6, seed=1)


def host_order(pair) -> np.ndarray:
    """(n_sites, 3) relaxed positions of ``pair`` by host site (vacancies NaN)."""
    out = np.full((len(pair.pristine), 3), np.nan)
    out[pair.site_index] = pair.relaxed_positions
    return out


def test_vasprun_and_outcar_writers_read_back_by_ase(tmp_path, runs):
    frames = runs[0]
    for path, fmt in ((write_vasprun(tmp_path / "vasprun.xml", frames), "vasp-xml"),
                      (write_outcar(tmp_path / "OUTCAR", frames), "vasp-out")):
        back = read(path, index=":", format=fmt)
        assert len(back) == len(frames)
        for a, b in zip(back, frames):
            assert a.get_chemical_symbols() == b.get_chemical_symbols()
            assert np.abs(a.positions - b.positions).max() < 1e-5
            assert a.get_potential_energy() == pytest.approx(b.get_potential_energy(), abs=1e-6)
            assert np.abs(a.get_forces() - b.get_forces()).max() < 1e-5


def test_every_source_kind_gives_the_same_pair(tmp_path, runs):
    frames = runs[1]
    write_vasprun(tmp_path / "a" / "vasprun.xml", frames)
    write_outcar(tmp_path / "b" / "OUTCAR", frames)
    (tmp_path / "c").mkdir()
    write(tmp_path / "c" / "POSCAR", frames[0], format="vasp")
    write(tmp_path / "c" / "CONTCAR", frames[-1], format="vasp")
    write(tmp_path / "d.traj", frames)
    write(tmp_path / "e.extxyz", frames)  # a folder scan takes it with fmt="runs" only
    host = cu_host()
    pairs, report = read_runs([tmp_path], host)
    assert [p.info["source"] for p in pairs] == [str(tmp_path / s) for s in
                                                 ("a/vasprun.xml", "b/OUTCAR", "c", "d.traj")]
    assert sorted(report.unchecked) == [str(tmp_path / "c"), str(tmp_path / "d.traj")]
    assert [p.info["convergence_checked"] for p in pairs] == [True, True, False, False]
    # the defects: frames[1] is runs' k=1 (two vacancies, an Ag), atoms grouped by species
    ref = pairs[0]
    assert len(ref.spec.vacancies) == 2 and list(ref.spec.substitutions.values()) == [47]
    for p in pairs[1:]:
        assert p.spec == ref.spec
        assert np.nanmax(np.abs(host_order(p) - host_order(ref))) < 1e-4
    # relaxed positions are the last frame's, continued from the host sites
    d, _ = find_mic(ref.relaxed_positions - ref.unrelaxed.positions, host.cell, True)
    moved = np.linalg.norm(d, axis=1)
    assert 0.01 < moved.max() < 0.5
    assert ref.info["final_fmax"] < ref.info["relax_fmax"] == 0.02
    assert ref.unrelaxed.get_potential_energy() == pytest.approx(frames[0].get_potential_energy())
    pairs, _ = read_runs([tmp_path], host, fmt="runs")
    assert pairs[-1].info["source"] == str(tmp_path / "e.extxyz")


def test_unusable_runs_are_reported_and_skipped(tmp_path, runs, caplog):
    good = runs[2]
    write_vasprun(tmp_path / "ok" / "vasprun.xml", good)
    write_vasprun(tmp_path / "forces" / "vasprun.xml", good, ediffg=-0.001)
    write_vasprun(tmp_path / "killed" / "vasprun.xml", good, complete=False)
    write_vasprun(tmp_path / "md" / "vasprun.xml", good, ibrion=0)
    write_outcar(tmp_path / "nsw" / "OUTCAR", good, converged=False)
    write_outcar(tmp_path / "cut" / "OUTCAR", good, converged=False, complete=False)
    grown = [f.copy() for f in good]
    grown[-1].set_cell(grown[-1].cell * 1.02, scale_atoms=True)
    write(tmp_path / "cell.traj", grown)
    other = cu_host()
    other.set_cell(other.cell * 1.1, scale_atoms=True)
    write(tmp_path / "other.traj", relaxation(defective(other, [0])))
    wrong = [f.copy() for f in good]
    for f in wrong:
        f.positions[0] += 1.5  # an atom far from every site
    write(tmp_path / "interstitial.traj", wrong)
    write(tmp_path / "fmax.traj", good[:3])
    with caplog.at_level(logging.WARNING, logger="ase_definet.data.runs"):
        pairs, report = read_runs([tmp_path], cu_host(), fmax=0.05)
    assert [p.info["source"] for p in pairs] == [str(tmp_path / "ok" / "vasprun.xml")]
    reasons = {src.removeprefix(str(tmp_path) + "/"): why for src, why in report.skipped}
    assert set(reasons) == {"forces", "killed", "md", "nsw", "cut", "cell.traj", "other.traj",
                            "interstitial.traj", "fmax.traj"}
    assert "above |EDIFFG| = 0.001" in reasons["forces"]
    assert "unfinished" in reasons["killed"] and "unfinished" in reasons["cut"]
    assert "molecular dynamics" in reasons["md"]
    assert "without reaching the required accuracy" in reasons["nsw"]
    assert "cell changes" in reasons["cell.traj"]
    assert "no pristine host has its cell" in reasons["other.traj"]
    assert "does not match its host" in reasons["interstitial.traj"]
    assert "above fmax = 0.05" in reasons["fmax.traj"]
    assert len([r for r in caplog.records if r.message.startswith("skipped ")]) == 9
    assert read_run(tmp_path / "forces").info["final_fmax"] == pytest.approx(
        pairs[0].info["final_fmax"])


def test_one_host_per_material(tmp_path, runs):
    small = cu_host()
    big = cu_host()
    big.set_cell(big.cell * 1.05, scale_atoms=True)  # another "material": other cell
    write(tmp_path / "CuA.cif", small)
    write(tmp_path / "CuB.cif", big)
    write_vasprun(tmp_path / "r0" / "vasprun.xml", runs[0])
    write(tmp_path / "r1.traj", relaxation(defective(big, [3], {5: "Au"})))
    pairs, report = read_runs([tmp_path], [tmp_path / "CuA.cif", tmp_path / "CuB.cif"])
    assert not report.skipped
    assert [p.info["material"] for p in pairs] == ["CuA", "CuB"]  # same formula: file names
    assert pairs[1].spec.vacancies == (3,) and pairs[1].spec.substitutions == {5: 79}


def test_pairs_command_writes_the_pair_schema(tmp_path, runs, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    write(tmp_path / "host.cif", cu_host())
    for k, frames in enumerate(runs):
        write_vasprun(tmp_path / "runs" / f"r{k}" / "vasprun.xml", frames)
    write_vasprun(tmp_path / "runs" / "bad" / "vasprun.xml", runs[0], complete=False)
    argv = ["pairs", "runs/*/vasprun.xml", "--pristine", "host.cif", "-o", "pairs.db",
            "--val-fraction", "0.34"]
    assert cli(argv) == 0
    pairs = list(iter_pairs([tmp_path / "pairs.db"]))
    direct, _ = read_runs(["runs/*/vasprun.xml"], tmp_path / "host.cif")
    assert len(pairs) == len(direct) == 6
    for a, b in zip(pairs, direct):
        assert a.spec == b.spec and a.info["config_id"] == b.info["config_id"]
        assert np.allclose(a.relaxed_positions, b.relaxed_positions)
        assert np.allclose(a.unrelaxed.positions, b.unrelaxed.positions)
    assert sorted(p.info["split"] for p in pairs) == ["train"] * 4 + ["val"] * 2
    with connect(tmp_path / "pairs.db") as db:
        row = next(db.select(config_id="runs/r0/vasprun.xml"))
        assert row.energy == pytest.approx(runs[0][0].get_potential_energy())
        assert row.relaxed_energy == pytest.approx(runs[0][-1].get_potential_energy())
        assert row.teacher == "vasp" and row.steps == len(runs[0])
    assert cli(argv) == 0  # a rerun adds nothing
    assert len(list(iter_pairs([tmp_path / "pairs.db"]))) == 6
    capsys.readouterr()
    assert cli(["summary", "pairs.db"]) == 0  # runs carry no density
    assert capsys.readouterr().out.splitlines()[-1].split() == ["all", "4", "2", "0", "6", "0", "0"]


@pytest.mark.parametrize("kind", ["vasp", "traj"])
def test_finetune_default_on_runs_end_to_end(tmp_path, runs, monkeypatch, caplog, kind):
    """The issue's 'done when': fine-tune the shipped default on VASP runs (or a folder
    of .traj files), see the starting and final validation MAE, load the result."""
    from ase_definet import DefiNetRelaxer

    monkeypatch.chdir(tmp_path)
    host = cu_host()
    write(tmp_path / "host.cif", host)
    for k, frames in enumerate(runs[:4]):  # 3 to train on, 1 to validate on: seconds
        if kind == "vasp":
            write_vasprun(tmp_path / "runs" / f"r{k}" / "vasprun.xml", frames)
        else:
            (tmp_path / "trajs").mkdir(exist_ok=True)
            write(tmp_path / "trajs" / f"r{k}.traj", frames)
    data = "runs/*/vasprun.xml" if kind == "vasp" else "trajs"
    with caplog.at_level(logging.INFO):
        rc = cli(["finetune", "--from", "default", "--data", data, "--pristine", "host.cif",
                  "--out", "ft", "--epochs", "1", "--batch-size", "3"])
    assert rc == 0
    _, meta = read_metadata(tmp_path / "ft" / "best.safetensors")
    metrics = meta["metrics"]
    start, final = metrics["start_val_mae"], metrics["val_mae"]
    assert 0 < start < 0.2 and 0 < final < 0.2 and metrics["start_val_dummy_mae"] > 0
    assert meta["n_train"] == 3 and meta["n_val"] == 1
    assert len(meta["data"]["files"]) == 4
    text = caplog.text
    assert f"val MAE {start:.4f}" in text and f"{final:.4f} Å after 1 epochs" in text
    assert "only 1 validation pair(s)" in text
    defect = defective(host, [7], {2: "Au"})
    relaxer = DefiNetRelaxer(defect, pristine=host, model="ft/best.safetensors", logfile=None)
    relaxer.run()
    d, _ = find_mic(relaxer.atoms.positions - defective(host, [7], {2: "Au"}).positions,
                    host.cell, True)
    assert 0 < np.linalg.norm(d, axis=1).max() < 0.5


def test_selective_dynamics_forces_on_fixed_atoms_do_not_count(tmp_path, runs):
    """As VASP does (and real vasprun.xml files show): the EDIFFG criterion holds for
    the free degrees of freedom only; fixed atoms ("F F F") may keep large forces."""
    from ase.calculators.singlepoint import SinglePointCalculator
    from ase.constraints import FixAtoms

    frames = [f.copy() for f in runs[3]]
    for f, old in zip(frames, runs[3]):
        forces = old.get_forces().copy()
        forces[:4] = 0.8  # the fixed bottom atoms pull hard
        f.set_constraint(FixAtoms(indices=range(4)))
        f.calc = SinglePointCalculator(f, energy=old.get_potential_energy(), forces=forces)
    run = read_run(write_vasprun(tmp_path / "vasprun.xml", frames))
    assert run.converged and run.info["final_fmax"] < 0.02
    assert len(run.frames[0].constraints) == 1  # read back from the selective flags


def test_cell_change_names_what_changed():
    from ase.build import bulk

    from ase_definet.core.matching import cell_change

    a = bulk("Cu", "fcc", a=3.6, cubic=True)
    assert cell_change(a, a.copy()) is None
    b = a.copy()
    b.set_cell(a.cell * 1.01, scale_atoms=True)
    assert cell_change(a, b).startswith("cell [3.6, 3.6, 3.6") and "3.636" in cell_change(a, b)
    c = a.copy()
    c.pbc = [True, True, False]
    assert cell_change(a, c) == "pbc [True, True, True] -> [True, True, False]"
