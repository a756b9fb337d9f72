"""The ASE optimizer contract of DefiNetRelaxer, polish mode and batched relaxation."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.constraints import FixAtoms
from ase.io import read
from ase.io.trajectory import Trajectory
from ase.optimize.optimize import Optimizer

from ase_definet import DefectSpec, DefiNetRelaxer
from ase_definet.batch import relax_many
from ase_definet.core.device import resolve_device
from ase_definet.core.hosts import get_host

from .conftest import tiny_model


def snapshot(atoms):
    return (atoms.positions.copy(), atoms.numbers.copy(), atoms.cell[:].copy(),
            atoms.pbc.copy(), dict(atoms.info), len(atoms.constraints))


def same(a, b):
    return all(np.array_equal(x, y) if isinstance(x, np.ndarray) else x == y
               for x, y in zip(a, b))


def test_run_irun_nsteps_and_host_untouched(host, spec, model):
    before = snapshot(host)
    r = DefiNetRelaxer(host, defects=spec, model=model, logfile=None)
    assert list(r.irun()) == [True]  # the prediction is step 0; no polish steps
    assert r.nsteps == 0 == r.get_number_of_steps()
    assert same(before, snapshot(host))  # the host given with defects= is not modified
    assert len(r.atoms) == len(host) - 2
    assert r.atoms.get_chemical_symbols()[0] == "W"
    assert np.abs(r.atoms.positions - host.positions[r.structure.spec.site_index(27)]).max() > 1e-3
    assert r.layers.shape == (model.config.layers + 1, 27, 3)
    r2 = DefiNetRelaxer(host, defects=spec, model=model, logfile=None)
    assert r2.run() is True
    assert np.allclose(r2.atoms.positions, r.atoms.positions)


def test_ase_optimizer_contract(host, spec, model):
    r = DefiNetRelaxer(host, defects=spec, model=model, logfile=None)
    assert isinstance(r, Optimizer)
    assert r.converged() is False  # nothing predicted yet
    assert r.run() is True and r.converged() is True
    first = r.atoms.positions.copy()
    assert r.run() is True  # a second run of a converged relaxer: True, nothing moves
    assert r.run(steps=3) is True and r.nsteps == 0
    assert np.array_equal(r.atoms.positions, first)
    d = r.todict()
    assert d["type"] == "optimization" and d["optimizer"] == "DefiNetRelaxer"
    with pytest.raises(TypeError):
        DefiNetRelaxer(host, spec)  # everything after atoms is keyword-only


def test_in_place_update_of_defective_atoms(host, spec, model):
    defective = DefectSpec.from_any(spec).apply(host)
    defective.info["tag"] = "mine"
    defective.set_tags(np.arange(len(defective)))
    r = DefiNetRelaxer(defective, pristine=host, model=model, logfile=None)
    assert r.atoms is defective and r.relaxed is defective
    r.run()
    ref = DefiNetRelaxer(host, defects=spec, model=model, logfile=None)
    ref.run()
    assert np.allclose(defective.positions, ref.atoms.positions, atol=1e-5)
    assert defective.info["tag"] == "mine"
    assert defective.get_tags().tolist() == list(range(len(defective)))


def test_observers_trajectory_and_todict(tmp_path, host, spec, model):
    calls = []
    traj = tmp_path / "relax.traj"
    with DefiNetRelaxer(host, defects=spec, model=model, logfile=None,
                        trajectory=traj) as r:
        r.attach(lambda: calls.append(r.nsteps), interval=2)
        r.attach(lambda tag: calls.append(tag), -1, "only-at-1")
        r.run()
        d = r.todict()
    assert calls == [0]  # observers run at step 0 (the prediction) and each polish step
    frames = read(traj, ":")
    assert len(frames) == 2  # the input, then the prediction
    assert np.allclose(frames[0].positions, host.positions[r.structure.spec.site_index(27)])
    assert np.allclose(frames[-1].positions, r.atoms.positions)
    assert d["optimizer"] == "DefiNetRelaxer" and d["layers"] == 3
    assert d["cutoff"] == 5.0 and "V_S" in d["defects"]
    with DefiNetRelaxer(host, defects=spec, model=model, logfile=None, trajectory=traj,
                        per_layer=True) as r:
        r.run()
    frames = read(traj, ":")  # replaced, not appended: the input and every layer
    assert len(frames) == model.config.layers + 1
    for frame, sites in zip(frames, r.layers):
        assert np.allclose(frame.positions, sites[r.structure.spec.site_index(27)], atol=1e-6)


def _log_rows(text):
    return [line.split() for line in text.splitlines() if line.strip()]


def test_trajectory_object_and_logfiles(tmp_path, host, spec, model, capsys):
    with Trajectory(tmp_path / "t.traj", "w") as traj:
        r = DefiNetRelaxer(host, defects=spec, model=model, logfile="-", trajectory=traj)
        r.run()
    assert len(read(tmp_path / "t.traj", ":")) == 2
    rows = _log_rows(capsys.readouterr().out)
    assert rows[0] == ["Step", "Time", "MaxDisp[A]", "RMSDisp[A]"]  # ASE's compact format
    assert len(rows) == 2 and rows[1][:2] == ["DefiNetRelaxer:", "0"]
    moved = np.linalg.norm(r.atoms.positions - host.positions[r.structure.spec.site_index(27)],
                           axis=1)
    assert float(rows[1][3]) == pytest.approx(moved.max(), abs=1e-6)
    assert float(rows[1][4]) == pytest.approx(np.sqrt((moved ** 2).mean()), abs=1e-6)
    DefiNetRelaxer(host, defects=spec, model=model, logfile=None).run()
    assert capsys.readouterr().out == ""
    log = tmp_path / "relax.log"
    with DefiNetRelaxer(host, defects=spec, model=model, logfile=log) as r:
        r.run()
    assert len(_log_rows(log.read_text())) == 2
    buf = io.StringIO()
    DefiNetRelaxer(host, defects=spec, model=model, logfile=buf, per_layer=True).run()
    rows = _log_rows(buf.getvalue())  # per-layer detail on request: one row per layer
    layer_rows = [row for row in rows if row[1] == "layer"]
    assert len(layer_rows) == model.config.layers
    assert float(layer_rows[-1][5]) == pytest.approx(moved.max(), abs=1e-5)
    assert rows[-1][:2] == ["DefiNetRelaxer:", "0"]


def test_fixed_atoms_do_not_move(host, spec, model):
    h = host.copy()
    h.set_constraint(FixAtoms(indices=[1, 2, 4, 20]))  # 4 is vacant
    r = DefiNetRelaxer(h, defects=spec, model=model, logfile=None)
    r.run()
    idx = list(r.structure.spec.site_index(len(h)))
    fixed = [idx.index(i) for i in (1, 2, 20)]
    assert np.array_equal(r.atoms.constraints[0].index, fixed)
    assert np.allclose(r.atoms.positions[fixed], h.positions[[1, 2, 20]])
    free = [k for k in range(len(r.atoms)) if k not in fixed]
    assert np.abs(r.atoms.positions[free] - h.positions[np.array(idx)[free]]).max() > 1e-3


@pytest.mark.parametrize("kwargs, msg", [
    (dict(defects={"vacancies": [999]}), "out of range"),
    (dict(defects={"vacancies": [1], "substitutions": {1: "W"}}), "both vacant"),
    (dict(defects={"substitutions": {0: "Qq"}}), "unknown chemical symbol"),
    (dict(defects={"substitutions": {0: "U"}}), "not among those the loaded weights"),
])
def test_errors_leave_atoms_untouched(host, kwargs, msg):
    model = tiny_model(elements=[16, 34, 42, 74])
    before = snapshot(host)
    with pytest.raises(ValueError, match=msg):
        DefiNetRelaxer(host, model=model, logfile=None, **kwargs)
    assert same(before, snapshot(host))


def test_mismatched_pair_and_bad_calls(host, spec, model):
    d = DefectSpec.from_any(spec).apply(host)
    d.positions[0] += [0.0, 0.0, 2.0]
    before = snapshot(d)
    with pytest.raises(ValueError, match="does not match its host"):
        DefiNetRelaxer(d, pristine=host, model=model, logfile=None)
    assert same(before, snapshot(d))
    with pytest.raises(ValueError, match="not both"):
        DefiNetRelaxer(host, defects=spec, pristine=host, model=model)
    r = DefiNetRelaxer(host, defects=spec, model=model, logfile=None)
    with pytest.raises(ValueError, match="needs a calculator"):
        r.run(fmax=0.05)
    assert r.nsteps == 0


def test_polish_mode_reaches_fmax_with_emt():
    host = bulk("Cu", "fcc", a=3.6, cubic=True) * (2, 2, 2)
    host.calc = EMT()
    model = tiny_model(cutoff=4.0, displacement_init=0.05)  # gentle random displacements
    log = io.StringIO()
    r = DefiNetRelaxer(host, defects={"vacancies": [0]}, model=model, logfile=log)
    assert r.run(fmax=0.02) is True and r.converged() is True
    assert np.linalg.norm(r.atoms.get_forces(), axis=1).max() < 0.02
    assert r.nsteps == r.polisher.nsteps > 0  # steps are polish (force) steps only
    rows = _log_rows(log.getvalue())
    assert [row[0] for row in rows].count("DefiNetRelaxer:") == 1
    assert [row[0] for row in rows].count("BFGS:") == r.nsteps + 1  # its step 0 too
    n = r.nsteps
    assert r.run(fmax=0.02) is True and r.nsteps == n  # converged: no further step
    calls = []
    r2 = DefiNetRelaxer(host, defects={"vacancies": [0]}, model=model, logfile=None,
                        polish_optimizer="FIRE")
    r2.attach(lambda: calls.append(r2.nsteps))
    assert r2.run(fmax=0.02, steps=2) is False  # capped polish: not converged
    assert r2.nsteps == 2 and calls == [0, 1, 2] and r2.converged() is False
    assert r2.run(fmax=0.02, steps=1) is False and r2.nsteps == 3  # steps counted on
    assert r2.run(fmax=0.02) is True and r2.converged() is True


def test_auto_detects_builtin_host(model):
    mos2 = get_host("MoS2")
    host = mos2.pristine((3, 3, 1))
    d = DefectSpec(vacancies=(5,), substitutions={0: 74}).apply(host)
    r = DefiNetRelaxer(d, model=model, logfile=None)
    assert r.structure.spec == DefectSpec(vacancies=(5,), substitutions={0: 74})
    alien = bulk("Cu", "fcc", a=3.6, cubic=True) * (2, 2, 2)
    del alien[0]
    with pytest.raises(ValueError, match=r"matches no built-in host.*pristine="):
        DefiNetRelaxer(alien, model=model, logfile=None)
    cu = tiny_model(elements=[29])
    r = DefiNetRelaxer(alien, model=cu, logfile=None, marker_free=True)
    assert r.structure.spec.n_defects == 0


def _constrained_host(host):
    h = host.copy()
    h.set_constraint(FixAtoms(indices=[1, 2, 20]))
    h.info["label"] = "mine"
    h.set_tags(np.arange(len(h)) % 3)
    h.new_array("charge", np.linspace(-1.0, 1.0, len(h)))
    return h


def _assert_same_atoms(got, ref):
    assert got.get_chemical_symbols() == ref.get_chemical_symbols()
    assert np.abs(got.positions - ref.positions).max() < 1e-5
    assert np.allclose(got.cell[:], ref.cell[:]) and (got.pbc == ref.pbc).all()
    assert got.info == ref.info
    assert sorted(got.arrays) == sorted(ref.arrays)
    for key in got.arrays:
        if key != "positions":
            assert np.array_equal(got.arrays[key], ref.arrays[key]), key
    assert [c.todict() for c in got.constraints] == [c.todict() for c in ref.constraints]


def test_relax_many_equals_relaxer_one_by_one(host, model, rng):
    h = _constrained_host(host)
    specs = [{"vacancies": [1]}, {"substitutions": {0: "W"}, "vacancies": [4]}]
    d = DefectSpec(vacancies=(3, 8), substitutions={2: "W"}).apply(h)
    shuffled = d[rng.permutation(len(d))]  # any order; FixAtoms re-indexed with it
    builtin = DefectSpec(vacancies=(5,)).apply(get_host("MoS2").pristine((3, 3, 1)))
    items = [(h, specs[0]), (h, specs[1]), (shuffled, h), builtin]
    before = [snapshot(x) for x in (h, shuffled, builtin)]
    out = relax_many(items, model=model, batch_size=3, progress=False)
    assert all(same(a, snapshot(x)) for a, x in zip(before, (h, shuffled, builtin)))
    for item, got in zip(items, out):
        if isinstance(item, tuple):
            a, b = item
            kw = {"pristine": b} if hasattr(b, "cell") else {"defects": b}
        else:
            a, kw = item, {}
        ref = DefiNetRelaxer(a.copy(), model=model, logfile=None, **kw)
        ref.run()
        _assert_same_atoms(got, ref.atoms)
    fixed = out[2].constraints[0].index
    assert np.allclose(out[2].positions[fixed], shuffled.positions[fixed])  # fixed atoms stay
    with pytest.raises(ValueError, match=r"item 1: .*out of range"):
        relax_many([(host, specs[0]), (host, {"vacancies": [99]})], model=model)


def test_device_resolution(monkeypatch):
    monkeypatch.delenv("DEFINET_DEVICE", raising=False)
    assert resolve_device("cpu").type == "cpu"
    monkeypatch.setenv("DEFINET_DEVICE", "cpu")
    assert resolve_device(None).type == "cpu"
    with pytest.raises(ValueError, match="invalid device"):
        resolve_device("quantum")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device("cuda")
        monkeypatch.delenv("DEFINET_DEVICE")
        assert resolve_device(None).type == "cpu"


@pytest.mark.slow
def test_relax_many_compiled_matches_eager(host, model):
    items = [(host, {"vacancies": [k]}) for k in range(3)]
    eager = relax_many(items, model=model, progress=False)
    comp = relax_many(items, model=model, progress=False, compile=True)
    for a, b in zip(eager, comp):
        assert np.abs(a.positions - b.positions).max() < 1e-4
