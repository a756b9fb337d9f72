"""Any origin, supercell, vacuum or cell basis of the user's structures: a rigid offset
between a defective structure and its host, and recognising the built-in hosts."""

from __future__ import annotations

import numpy as np
import pytest
from ase.build import graphene, make_supercell, mx2

from ase_definet import DefectSpec, DefectStructure, DefiNetRelaxer
from ase_definet.core.hostmatch import find_host
from ase_definet.core.hosts import get_host
from ase_definet.core.matching import match_to_host

from .conftest import tiny_model


def _relaxed_displacements(defective, pristine, model, **kw):
    start = defective.positions.copy()
    r = DefiNetRelaxer(defective, pristine=pristine, model=model, logfile=None, **kw)
    r.run()
    return r.atoms.positions - start, r.structure


@pytest.mark.parametrize("offset", [(0.5, 0.3, 0.2), (0.1, 0.0, 0.0), (-0.55, 0.45, -0.6),
                                    (0.0, 0.0, 0.97)])
def test_rigid_offset_does_not_change_the_prediction(host, model, offset):
    d = DefectSpec(vacancies=(4, 10), substitutions={0: 74}).apply(host)
    d.rattle(0.03, seed=3)
    ref, s_ref = _relaxed_displacements(d.copy(), host, model)
    shifted = d.copy()
    shifted.positions += offset
    got, s = _relaxed_displacements(shifted, host, model)
    assert s.spec == s_ref.spec
    assert np.abs(got - ref).max() < 1e-4
    assert np.allclose(s.translation, np.asarray(offset) + s_ref.translation, atol=1e-9)


def test_offset_across_a_short_bond_is_resolved_by_element():
    """h-BN's B-N bond is 1.45 Å: an offset of 0.9 Å brings B atoms nearer to N sites
    than to their own; matching by element still finds the rigid translation."""
    host = graphene(formula="BN", a=2.51, vacuum=5.0) * (4, 4, 1)
    host.pbc = True
    model = tiny_model(elements=[5, 6, 7])
    d = DefectSpec(vacancies=(3,), substitutions={8: "C"}).apply(host)
    bond = host.positions[1] - host.positions[0]
    offset = 0.9 * bond / np.linalg.norm(bond)
    ref, s_ref = _relaxed_displacements(d.copy(), host, model)
    shifted = d.copy()
    shifted.positions += offset
    got, s = _relaxed_displacements(shifted, host, model)
    assert s.spec == s_ref.spec == DefectSpec(vacancies=(3,), substitutions={8: 6})
    assert np.abs(got - ref).max() < 1e-4


def test_unresolvable_offset_is_refused(host, model):
    d = DefectSpec(vacancies=(4,)).apply(host)
    d.positions += (0.0, 0.0, 1.4)  # more than the matching tolerance (1 Å)
    before = d.positions.copy()
    with pytest.raises(ValueError, match=r"rigid offset of 1.4"):
        DefiNetRelaxer(d, pristine=host, model=model, logfile=None)
    assert np.array_equal(d.positions, before)
    m = match_to_host(d, host, tolerance=1.5)  # a larger tolerance resolves it
    assert m.spec == DefectSpec(vacancies=(4,))
    assert np.allclose(m.translation, (0.0, 0.0, 1.4))


def test_structure_records_the_translation(host):
    d = DefectSpec(vacancies=(1,)).apply(host)
    d.positions += (0.2, -0.1, 0.3)
    s = DefectStructure.from_pair(d, host)
    assert np.allclose(s.translation, (0.2, -0.1, 0.3))
    keep = s.spec.site_index(len(host))
    assert np.allclose(s.site_positions[keep], host.positions[keep])  # host frame
    assert np.allclose(s.atom_positions(s.site_positions), d.positions)  # user frame


def _mos2(a=3.1939, thickness=3.126, vacuum=7.0):
    at = mx2("MoS2", kind="2H", a=a, thickness=thickness, vacuum=vacuum)
    at.pbc = True
    return at


@pytest.mark.parametrize("case", ["4x3 vacuum 7", "origin", "ase defaults", "60 degree basis",
                                  "rotated", "sqrt3 R30", "1x1"])
def test_builtin_host_found_for_any_supercell_vacuum_origin_and_basis(case):
    unit = _mos2()
    if case == "4x3 vacuum 7":
        at = unit * (4, 3, 1)
    elif case == "origin":
        at = unit * (3, 3, 1)
        at.positions += (1.3, -0.7, 4.1)
        at.wrap()
    elif case == "ase defaults":  # a = 3.18 Å, S-S 3.19 Å: 0.4 % off the shipped lattice
        at = _mos2(a=3.18, thickness=3.19, vacuum=10.0) * (3, 3, 1)
    elif case == "60 degree basis":
        at = make_supercell(unit, [[1, 0, 0], [1, 1, 0], [0, 0, 1]]) * (3, 3, 1)
    elif case == "rotated":
        at = unit * (3, 2, 1)
        at.rotate(37, "z", rotate_cell=True)
    elif case == "sqrt3 R30":
        at = make_supercell(unit, [[2, 1, 0], [-1, 1, 0], [0, 0, 1]])
    else:
        at = unit.copy()
    d = DefectSpec(vacancies=(1,)).apply(at)
    found = find_host(d)
    assert found is not None, case
    host, pristine = found
    assert host.name == "MoS2" and len(pristine) == len(at)
    assert np.allclose(pristine.cell[:], d.cell[:])
    m = match_to_host(d, pristine)
    assert len(m.spec.vacancies) == 1 and not m.spec.substitutions
    assert np.linalg.norm(m.offsets - m.translation, axis=1).max() < 0.1


def test_relaxer_uses_the_detected_host_in_place():
    model = tiny_model(elements=[16, 34, 42, 74])
    at = _mos2(vacuum=9.0) * (3, 3, 1)
    at.positions += (0.4, 0.2, 1.0)
    d = DefectSpec(vacancies=(2,), substitutions={3: "W"}).apply(at)
    r = DefiNetRelaxer(d, model=model, logfile=None)
    assert r.atoms is d
    assert sorted(r.todict()["defects"].split(", ")) == ["V_S x1", "W_Mo x1"]
    ref, _ = _relaxed_displacements(d.copy(), at, model)
    start = d.positions.copy()
    r.run()
    assert np.abs((d.positions - start) - ref).max() < 1e-4


def test_other_materials_are_told_apart():
    for name in ("WSe2", "hBN", "InSe", "BP"):
        at = get_host(name).pristine((2, 3, 1))
        at.positions += (0.3, 0.1, -2.0)
        del at[[0]]
        host, _ = find_host(at)
        assert host.name == name
