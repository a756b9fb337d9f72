"""Trust: per-atom uncertainty (stage spread, calibrated), out-of-range warnings, and a
polish that never starts from a worse structure."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from ase.calculators.calculator import Calculator, all_changes
from ase.constraints import FixAtoms

from ase_definet import DefiNetRelaxer, OutOfRangeWarning, available_weights
from ase_definet.batch import relax_many
from ase_definet.core.domain import Domain, defect_kinds, host_distances
from ase_definet.core.uncertainty import (
    Calibration,
    fit_calibration,
    predicted_shift,
    stage_spread,
)

from .conftest import small_host, tiny_model


def staged_model(seed: int = 0):
    model = tiny_model(seed, refine=2, displacement_init=0.1)
    model.metadata = {}
    return model


def test_stage_spread_sums_the_corrections_after_the_first_stage():
    T, n = 2, 4
    layers = np.zeros((3 * T + 1, n, 3))
    layers[T, :, 0] = 1.0  # stage 1 moves every site by 1 Å: not counted
    layers[2 * T, :, 0] = 1.0
    layers[2 * T, 1, 0] = 1.3  # stage 2 moves site 1 by 0.3 Å
    layers[3 * T, 1, 0] = 1.0  # stage 3 moves it back
    layers[3 * T, 2, 1] = 0.4  # and site 2 by 0.4 Å (on top of its 1 Å in x)
    layers[3 * T, 2, 0] = 1.0
    layers[3 * T, [0, 3], 0] = 1.0
    assert stage_spread(layers, [T, 2 * T, 3 * T]) == pytest.approx([0, 0.6, 0.4, 0])
    one = np.zeros((T + 1, n, 3))
    one[T, 0, 2] = 0.2
    assert stage_spread(one, [T]) == pytest.approx([0.2, 0, 0, 0])  # one stage: last layer
    # refiners of one layer: the stages end at T, T + 1, T + 2
    short = layers[[*range(T + 1), 2 * T, 3 * T]]
    assert stage_spread(short, [T, T + 1, T + 2]) == pytest.approx([0, 0.6, 0.4, 0])
    with pytest.raises(ValueError, match="do not end at stages"):
        stage_spread(np.zeros((4, n, 3)), [2, 4])
    with pytest.raises(ValueError, match="do not end at stages"):
        stage_spread(np.zeros((5, n, 3)), [4, 4])


def _structures(rng, n_structures=300):
    """Synthetic (spreads, errors) per structure: the error scales with the atom's
    spread and, beyond it, with the structure's size (as the far field of a larger cell
    relaxes further), a part the spread alone does not show."""
    spreads, errors = [], []
    for _ in range(n_structures):
        n = int(rng.choice([75, 150, 300, 600]))
        s = rng.lognormal(-5, 1.2, n)
        spreads.append(s)
        errors.append(2.0 * s * (n / 150) ** 0.7 * rng.exponential(1.0, n))
    return spreads, errors


def _coverage(cal, spreads, errors):
    return np.mean(np.concatenate([e <= cal.bound90(s) for s, e in zip(spreads, errors)]))


def test_calibration_is_monotone_and_its_90_percent_bound_holds_in_every_cell_size():
    rng = np.random.default_rng(0)
    spreads, errors = _structures(rng)
    cal = fit_calibration(spreads, errors)
    assert cal.weights[0] > 0 and cal.weights[2] > 0.4 and cal.size_range == (75, 600)
    x = np.geomspace(1e-5, 1.0, 50)  # one structure's atoms, increasing spreads
    assert (np.diff(cal.expected_error(x)) >= 0).all() and (np.diff(cal.bound90(x)) >= 0).all()
    fresh = _structures(rng)  # fresh draws of the same law
    spread_only = fit_calibration(spreads, errors, structure_terms=False)
    for n in (75, 600):
        sel = [i for i, s in enumerate(fresh[0]) if len(s) == n]
        s2, e2 = [fresh[0][i] for i in sel], [fresh[1][i] for i in sel]
        assert 0.86 < _coverage(cal, s2, e2) < 0.94
        # the spread alone is over-confident in large cells, under-confident in small
        assert (_coverage(spread_only, s2, e2) < 0.86) if n == 600 else (
            _coverage(spread_only, s2, e2) > 0.97)
        mean_err = np.mean(np.concatenate(e2))
        mean_pred = np.mean(np.concatenate([cal.expected_error(s) for s in s2]))
        assert mean_pred == pytest.approx(mean_err, rel=0.15)
    # atom counts beyond the calibrated range are clipped to it
    big = rng.lognormal(-5, 1.2, 5000)
    assert cal.bound90(big)[:600] == pytest.approx(cal.bound90(big[:600]), rel=0.3)
    assert cal.bound90(big).mean() < 1.5 * cal.bound90(big[:600]).mean()
    back = Calibration.from_dict(cal.to_dict())
    assert back == cal
    bad = cal.to_dict() | {"knots": cal.knots[::-1]}
    with pytest.raises(ValueError, match="knots must increase"):
        Calibration.from_dict(bad)
    with pytest.raises(ValueError, match="three or five finite weights"):
        Calibration.from_dict(cal.to_dict() | {"weights": [0.0, 1.0, 1.0]})
    with pytest.raises(ValueError, match="one array per structure"):
        fit_calibration(spreads, errors[:-1])


def _shifted_structures(rng, n_structures=300):
    """Synthetic (spreads, shifts, errors): beyond the spread, the error grows with how
    far the atom is predicted to move, which the spread alone does not show."""
    spreads, shifts, errors = [], [], []
    for _ in range(n_structures):
        n = int(rng.choice([75, 150]))
        s = rng.lognormal(-5, 1.0, n)
        h = rng.lognormal(-3, 1.2, n)
        spreads.append(s)
        shifts.append(h)
        errors.append(0.3 * np.sqrt(s * h) * rng.exponential(1.0, n))
    return spreads, shifts, errors


def _spearman(a, b):
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return np.corrcoef(ra, rb)[0, 1]


def test_the_predicted_shift_sharpens_the_calibration():
    rng = np.random.default_rng(3)
    spreads, shifts, errors = _shifted_structures(rng)
    with_shift = fit_calibration(spreads, errors, shifts=shifts)
    without = fit_calibration(spreads, errors)
    assert with_shift.needs_shift and len(with_shift.weights) == 5
    assert not without.needs_shift and len(without.weights) == 3
    assert with_shift.weights[3] > 0.3  # the atom's own shift counts
    s2, h2, e2 = _shifted_structures(rng)  # fresh draws
    e = np.concatenate(e2)
    u = np.concatenate([with_shift.expected_error(s, h) for s, h in zip(s2, h2)])
    u0 = np.concatenate([without.expected_error(s) for s in s2])
    assert _spearman(u, e) > _spearman(u0, e) + 0.1
    cover = np.mean(np.concatenate([ei <= with_shift.bound90(s, h)
                                    for s, h, ei in zip(s2, h2, e2)]))
    assert 0.86 < cover < 0.94
    with pytest.raises(ValueError, match="reads the predicted shift"):
        with_shift.expected_error(s2[0])
    with pytest.raises(ValueError, match="one value per atom"):
        with_shift.bound90(s2[0], h2[0][:-1])
    assert Calibration.from_dict(with_shift.to_dict()) == with_shift
    with pytest.raises(ValueError, match="three or five finite weights"):
        Calibration.from_dict(with_shift.to_dict() | {"weights": [1.0, 0.0, 0.0, 1.0]})
    with pytest.raises(ValueError, match="one array per structure"):
        fit_calibration(spreads, errors, shifts=shifts[:-1])
    layers = np.zeros((4, 2, 3))
    layers[-1, 1] = [0.3, 0.4, 0.0]
    layers[1, 0] = [1.0, 0.0, 0.0]  # an intermediate layer does not count
    assert predicted_shift(layers) == pytest.approx([0.0, 0.5])


def test_a_calibration_without_score_weights_maps_the_spread_alone():
    """Checkpoints calibrated before the structure terms keep their meaning."""
    old = {"knots": [1e-4, 1e-2], "mean": [0.001, 0.05], "q90": [0.002, 0.1],
           "structure_threshold": 1.0, "n_atoms": 100}
    cal = Calibration.from_dict(old)
    assert cal.weights == (1.0, 0.0, 0.0)
    s = np.array([1e-4, 1e-3, 1e-2])
    assert cal.expected_error(s) == pytest.approx(
        np.interp(np.log(s), np.log([1e-4, 1e-2]), [0.001, 0.05]))
    assert cal.expected_error(s[:1]) == pytest.approx(cal.expected_error(s)[:1])


def test_uncertainty_of_the_relaxer_in_the_order_of_its_atoms(host):
    model = staged_model()
    r = DefiNetRelaxer(host, defects={"vacancies": [4], "substitutions": {0: "W"}},
                       model=model, logfile=None)
    assert r.uncertainty is None
    r.run()
    assert r.uncertainty.shape == (len(r.atoms),) and np.isfinite(r.uncertainty).all()
    assert (r.uncertainty >= 0).all() and r.uncertainty.max() > 0
    assert r.uncertainty_calibrated is False  # a model without calibration: raw spread
    # a (defective, pristine) input in another order: the uncertainty follows its atoms
    defective = r.atoms.copy()
    perm = np.random.default_rng(1).permutation(len(defective))
    shuffled = defective[perm]
    r2 = DefiNetRelaxer(shuffled.copy(), pristine=host, model=model, logfile=None)
    r2.run()
    r3 = DefiNetRelaxer(defective.copy(), pristine=host, model=model, logfile=None)
    r3.run()
    assert r2.uncertainty == pytest.approx(r3.uncertainty[perm], abs=1e-6)
    # relax_many gives the same uncertainty per item
    res = relax_many([(shuffled, host), (defective, host)], model=model, progress=False)
    assert res.uncertainty[0] == pytest.approx(r2.uncertainty, abs=1e-6)
    assert res.uncertainty[1] == pytest.approx(r3.uncertainty, abs=1e-6)
    assert res.out_of_range == [[], []]


def test_calibrated_uncertainty_and_the_structure_threshold(host):
    model = staged_model()
    cal = Calibration(knots=(1e-4, 1e-2), mean=(0.001, 0.05), q90=(0.002, 0.1),
                      structure_threshold=1e-9)
    model.metadata = {"uncertainty": {"3": cal.to_dict()}}
    with pytest.warns(OutOfRangeWarning, match="above the calibrated threshold"):
        r = DefiNetRelaxer(host, defects={"vacancies": [4]}, model=model, logfile=None)
        r.run()
    assert r.uncertainty_calibrated and (r.bound90 >= r.uncertainty).all()
    assert r.todict()["out_of_range"] and r.todict()["mean_uncertainty"] > 0
    # a calibration with shift terms: the atoms the network moves further are less sure
    moving = Calibration(knots=(1e-6, 1e2), mean=(1e-6, 1e2), q90=(2e-6, 2e2),
                         structure_threshold=1e9, weights=(1e-3, 0.0, 0.0, 1.0, 0.0))
    model.metadata = {"uncertainty": {"3": moving.to_dict()}}
    r2 = DefiNetRelaxer(host, defects={"vacancies": [4]}, model=model, logfile=None)
    r2.run()
    start = np.delete(host.positions, 4, axis=0)
    shift = np.linalg.norm(r2.atoms.positions - start, axis=1)
    assert r2.uncertainty_calibrated and r2.out_of_range == []
    assert _spearman(r2.uncertainty, shift) > 0.95
    model.metadata = {"uncertainty": {"3": cal.to_dict()}}
    r1 = DefiNetRelaxer(host, defects={"vacancies": [4]}, model=model, logfile=None, stages=1)
    r1.run()  # no calibration for one stage: raw spread, nothing flagged
    assert r1.uncertainty_calibrated is False and r1.out_of_range == []


def _domain_model(host):
    model = staged_model()
    dom = Domain()
    dom.add_host(host)
    dom.defect_kinds = defect_kinds(host.numbers, [4], {0: 74, 5: 34})
    model.metadata = {"domain": dom.to_dict()}
    return model


def test_no_warning_in_range_warnings_for_strain_chemistry_and_antisites(host):
    model = _domain_model(host)
    with warnings.catch_warnings():
        warnings.simplefilter("error", OutOfRangeWarning)
        r = DefiNetRelaxer(host, defects={"vacancies": [10], "substitutions": {3: "W"}},
                           model=model, logfile=None)
        r.run()
    assert r.out_of_range == []
    strained = host.copy()
    strained.set_cell(host.cell[:] * [1.04, 1.04, 1.0], scale_atoms=True)
    with pytest.warns(OutOfRangeWarning, match="distances outside the trained range.*Mo-S"):
        DefiNetRelaxer(strained, defects={"vacancies": [4]}, model=model, logfile=None)
    with pytest.warns(OutOfRangeWarning, match=r"defect kind\(s\) S>Mo never seen"):  # antisite
        DefiNetRelaxer(host, defects={"substitutions": {1: "Mo"}}, model=model, logfile=None)
    ws2 = host.copy()
    ws2.numbers[ws2.numbers == 42] = 74
    with pytest.warns(OutOfRangeWarning, match=r"element pair\(s\) .*S-W.* never seen"):
        r = DefiNetRelaxer(ws2, defects={"vacancies": [4]}, model=model, logfile=None)
    assert any("S-W" in x for x in r.todict()["out_of_range"])
    with warnings.catch_warnings():
        warnings.simplefilter("error", OutOfRangeWarning)
        DefiNetRelaxer(ws2, defects={"vacancies": [4]}, model=model, logfile=None,
                       check_range=False)


def _plane(angle_deg: float, a: float = 2.5, n: int = 6):
    """A one-element 2D lattice of spacing ``a`` at ``angle_deg`` between its vectors:
    the same nearest-neighbour distance at any angle from 60 to 90 degrees."""
    from ase import Atoms

    t = np.radians(angle_deg)
    cell = [[a, 0, 0], [a * np.cos(t), a * np.sin(t), 0], [0, 0, 15.0]]
    return Atoms("C", positions=[[0, 0, 7.5]], cell=cell, pbc=True).repeat((n, n, 1))


def test_shells_flag_a_lattice_with_the_same_bonds_at_other_angles():
    from ase_definet.core.domain import host_shells

    square, sheared = _plane(90.0), _plane(80.0)
    dom = Domain()
    dom.add_host(square)
    assert host_distances(sheared)["C-C"] == pytest.approx(host_distances(square)["C-C"])
    assert dom.reasons(square, []) == []
    (why,) = dom.reasons(sheared, [])
    assert why.startswith("neighbour shells outside the trained range") and "C>C" in why
    assert host_shells(square)["C>C"][:5] == pytest.approx([2.5] * 4 + [2.5 * 2 ** 0.5])
    # a domain recorded before the shells (no "shells" key) does not check them
    old = {k: v for k, v in dom.to_dict().items() if not k.startswith("shell")}
    assert Domain.from_dict(old).reasons(sheared, []) == []
    assert Domain.from_dict(dom.to_dict()) == dom


def test_host_distances_of_mos2():
    d = host_distances(small_host(3))
    assert d["Mo-S"] == pytest.approx(2.41, abs=0.02) and d["Mo-Mo"] == pytest.approx(3.19)


def test_host_geometry_is_cached_per_geometry_and_handed_out_as_copies():
    from ase_definet.core.domain import host_geometry

    host = small_host(3)
    first = host_geometry(host)
    assert first == host_geometry(host, cached=False)
    first.distances["Mo-S"] = 9.9  # the caller's copy: the cache keeps its own
    first.shells["Mo>S"][0] = 9.9
    again = host_geometry(host)
    assert again.distances["Mo-S"] == pytest.approx(2.41, abs=0.02)
    assert again.shells["Mo>S"][0] == pytest.approx(2.41, abs=0.02)
    moved = host.copy()
    moved.set_cell(moved.cell[:] * [[1.03], [1.03], [1.0]], scale_atoms=True)  # strained
    assert host_geometry(moved).distances["Mo-Mo"] > again.distances["Mo-Mo"] * 1.02


class Spring(Calculator):
    """E = k |x - x0|^2 about given positions: a structure is worse the further it is."""

    implemented_properties = ("energy", "forces")

    def __init__(self, x0, k=1.0):
        super().__init__()
        self.x0, self.k = np.array(x0), k

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        d = atoms.positions - self.x0
        self.results = {"energy": self.k * float((d ** 2).sum()), "forces": -2 * self.k * d}


@pytest.mark.parametrize("switch", [True, False])
def test_polish_starts_from_the_lower_of_input_and_prediction(host, switch):
    model = staged_model()
    r0 = DefiNetRelaxer(host, defects={"vacancies": [4]}, model=model, logfile=None)
    atoms = r0.atoms  # the unrelaxed defective structure
    atoms.calc = Spring(atoms.positions)  # the input is the minimum: the prediction is worse
    atoms.set_constraint(FixAtoms([0]))
    r0.polish_from_lower = switch
    r0.run(fmax=0.05, steps=50)
    if switch:
        assert r0.polish_start == "input"
        assert r0.energies["input"] < r0.energies["prediction"]
        assert r0.nsteps == 0  # already at the minimum: no polish step needed
    else:
        assert r0.polish_start == "prediction" and r0.nsteps > 0
    assert r0.todict()["polish_start"] == r0.polish_start


def test_cli_writes_the_uncertainty_into_extxyz_and_plots_it(tmp_path, host):
    from ase.io import read, write

    from ase_definet.cli import main as cli

    write(tmp_path / "host.cif", host)
    out = tmp_path / "relaxed.extxyz"
    assert cli(["relax", str(tmp_path / "host.cif"), "--vacancies", "4", "-o", str(out),
                "--quiet"]) == 0
    at = read(out)
    assert at.arrays["uncertainty"].shape == (len(at),)
    assert np.isfinite(at.arrays["uncertainty"]).all() and (at.arrays["bound90"] > 0).all()
    assert (at.arrays["bound90"] >= at.arrays["uncertainty"]).all()  # calibrated weights
    png = tmp_path / "u.png"
    assert cli(["plot", str(tmp_path / "host.cif"), "--vacancies", "4", "--color",
                "uncertainty", "-o", str(png)]) == 0
    assert png.stat().st_size > 10_000


@pytest.mark.parametrize("name", available_weights())
def test_shipped_weights_carry_a_calibration_and_a_domain(host, name):
    from ase_definet.core.checkpoint import read_metadata
    from ase_definet.core.domain import Domain
    from ase_definet.core.uncertainty import calibrations_from_metadata

    config, meta = read_metadata(name)
    cals = calibrations_from_metadata(meta)
    n_stages = 1 + config.refine  # one calibration per number of stages run
    assert sorted(cals) == list(range(1, n_stages + 1))
    assert all(c.n_atoms > 10_000 for c in cals.values())
    dom = Domain.from_dict(meta["domain"])
    assert {"Mo-S", "Se-W", "B-N", "Ga-Se", "In-Se", "P-P"} <= set(dom.distances)
    assert {"V_S", "Mo>W", "P>N"} <= dom.defect_kinds and "S>Mo" not in dom.defect_kinds
    with warnings.catch_warnings():
        warnings.simplefilter("error", OutOfRangeWarning)
        from ase_definet.core.hosts import get_host

        for material in ("MoS2", "WSe2", "hBN", "GaSe", "InSe", "BP"):  # the usual lattices
            DefiNetRelaxer(get_host(material).pristine(), defects={"vacancies": [0]},
                           model=name, logfile=None)


def test_cli_calibrate_records_calibration_domain_version_and_description(tmp_path, capsys):
    """``definet calibrate`` writes a copy with the calibration of every stage count, the
    training domain and, when asked, the weights' version and data description; the
    tensors and the input file are left as they were."""
    import ase.db
    import torch

    from ase_definet import load_checkpoint, save_checkpoint
    from ase_definet.cli import main as cli
    from ase_definet.data.store import write_pair

    from .test_train import synthetic_pairs

    db = tmp_path / "pairs.db"
    with ase.db.connect(db) as conn:
        for pair in synthetic_pairs(30):
            pair.info["converged"] = True
            write_pair(conn, pair)
    src = save_checkpoint(tiny_model(refine=1), tmp_path / "m.safetensors")
    before = src.read_bytes()
    out = tmp_path / "calibrated.safetensors"
    assert cli(["calibrate", str(src), "--data", str(db), "-o", str(out),
                "--weights-version", "v99", "--description", "CHGNet pairs. Not DFT."]) == 0
    assert "score 1.000 log spread" in capsys.readouterr().out
    assert src.read_bytes() == before
    model, meta = load_checkpoint(out)
    original, _ = load_checkpoint(src)
    assert meta["weights_version"] == "v99"
    assert meta["data"]["description"] == "CHGNet pairs. Not DFT."
    assert sorted(meta["uncertainty"]) == ["1", "2"] and meta["domain"]
    for a, b in zip(model.state_dict().values(), original.state_dict().values()):
        assert torch.equal(a, b)


@pytest.mark.parametrize("name", available_weights())
def test_shipped_weights_know_the_trained_strain_range(name):
    """The README's coverage: the default trained on hosts strained -4..+4 %, so a host
    strained 3 % is inside its domain and one strained 8 % raises the warning."""
    from ase_definet.core.hosts import get_host

    def strained(eps):
        atoms = get_host("MoS2").pristine()
        atoms.set_cell(atoms.cell[:] * [[1 + eps] * 3, [1 + eps] * 3, [1, 1, 1]],
                       scale_atoms=True)
        return atoms

    with warnings.catch_warnings():
        warnings.simplefilter("error", OutOfRangeWarning)
        DefiNetRelaxer(strained(0.03), defects={"vacancies": [1]}, model=name, logfile=None)
    with pytest.warns(OutOfRangeWarning, match="strained or other lattice"):
        DefiNetRelaxer(strained(0.08), defects={"vacancies": [1]}, model=name, logfile=None)
