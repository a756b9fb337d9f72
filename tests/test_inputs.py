"""Defect specs, matching a defective structure to its host, and every bad input."""

from __future__ import annotations

import numpy as np
import pytest
from ase import Atoms

from ase_definet import DefectSpec, DefectStructure
from ase_definet.core.matching import match_to_host

from .conftest import small_host


def test_spec_from_dict_and_markers(host, spec):
    s = DefectSpec.from_any(spec)
    assert s.vacancies == (4, 10)
    assert s.substitutions == {0: 74, 5: 34}
    m = s.markers(len(host))
    assert m[4] == m[10] == 2 and m[0] == m[5] == 1 and m.sum() == 6
    d = s.apply(host)
    assert len(d) == len(host) - 2
    idx = s.site_index(len(host))
    assert list(idx[:5]) == [0, 1, 2, 3, 5]  # host order, vacancies removed
    assert d[0].symbol == "W" and d[4].symbol == "Se"
    assert len(host) == 27 and host[0].symbol == "Mo"  # host untouched


@pytest.mark.parametrize("bad, msg", [
    ({"vacancies": [99]}, "out of range"),
    ({"vacancies": [-1]}, "out of range"),
    ({"substitutions": {27: "W"}}, "out of range"),
    ({"vacancies": [3], "substitutions": {3: "W"}}, "both vacant and substituted"),
    ({"substitutions": {0: "Xx"}}, "unknown chemical symbol"),
    ({"vacancies": [1, 1]}, "more than once"),
    ({"vacancies": [1.5]}, "must be an integer"),
    ({"vacancy": [1]}, "unknown key"),
    ("V_S", "must be a DefectSpec or a dict"),
])
def test_bad_specs(host, bad, msg):
    with pytest.raises(ValueError, match=msg):
        DefectStructure.from_host(host, bad)


def test_unknown_element_for_weights(host):
    with pytest.raises(ValueError, match=r"\['W'\] are not among those the loaded weights"):
        DefectStructure.from_host(host, {"substitutions": {0: "W"}}, elements=[16, 42])


@pytest.mark.parametrize("pbc, cell, msg", [
    (False, None, "not periodic"),
    (True, [[3, 0, 0], [6, 0, 0], [0, 0, 10]], "degenerate"),
    (True, [[3, 0, 0], [0, 0, 0], [0, 0, 10]], "degenerate"),
])
def test_bad_cells(host, pbc, cell, msg):
    at = host.copy()
    at.pbc = pbc
    if cell is not None:
        at.set_cell(cell)
    with pytest.raises(ValueError, match=msg):
        DefectStructure.from_host(at, {"vacancies": [1]})


def _defective(host, spec, seed=0, rattle=0.0):
    d = DefectSpec.from_any(spec).apply(host)
    if rattle:
        d.rattle(rattle, seed=seed)
    return d


def test_match_exact_wrapped_permuted_relaxed(host, spec, rng):
    want = DefectSpec.from_any(spec)
    d = _defective(host, spec, rattle=0.15)  # an "already relaxed" input
    d.positions += host.cell[0] * 2 - host.cell[2]  # wrong periodic images
    perm = rng.permutation(len(d))
    shuffled = d[perm]
    shuffled.wrap()
    m = match_to_host(shuffled, host)
    assert m.spec == want
    expected_sites = want.site_index(len(host))[perm]
    assert np.array_equal(m.site_index, expected_sites)
    assert np.linalg.norm(m.offsets, axis=1).max() < 0.15 * 4  # a few sigma of the rattle
    # DefectStructure unwraps atoms next to their sites and maps back to the user's image
    s = DefectStructure.from_pair(shuffled, host)
    back = s.atom_positions(s.site_positions)
    assert np.abs(back - shuffled.positions).max() < 1e-9


def test_match_errors(host, spec):
    d = _defective(host, spec)
    other = d.copy()
    other.set_cell(host.cell[:] * 1.1, scale_atoms=True)
    with pytest.raises(ValueError, match="does not match its host: the cells differ"):
        match_to_host(other, host)
    far = d.copy()
    far.positions[3] += [0.0, 0.0, 1.5]  # an atom far from every site
    with pytest.raises(ValueError, match="does not match its host: atom 3"):
        match_to_host(far, host)
    extra = host + Atoms("S", positions=[[0.5, 0.5, 6.0]])
    extra.set_cell(host.cell)
    with pytest.raises(ValueError, match="interstitials are not supported"):
        match_to_host(extra, host)
    nopbc = d.copy()
    nopbc.pbc = [True, True, False]
    with pytest.raises(ValueError, match="pbc"):
        match_to_host(nopbc, host)


def test_match_resolves_two_atoms_near_one_site(host):
    """Two atoms both nearest to one site get the optimal (not greedy) assignment."""
    d = host.copy()
    i = 1
    dist = np.linalg.norm(host.positions - host.positions[i], axis=1)
    dist[i] = np.inf
    j = int(dist.argmin())  # the nearest neighbour site of site i
    u = (host.positions[i] - host.positions[j]) / dist[j]
    d.positions[j] += (0.5 * dist[j] + 0.2) * u  # past the midpoint, toward site i
    m = match_to_host(d, host, tolerance=dist[j])
    assert np.array_equal(m.site_index, np.arange(len(host)))
    assert m.spec.n_defects == 0


def test_large_supercell_matching_is_fast(rng):
    import time

    big = small_host(16)  # 768 sites
    spec = {"vacancies": rng.choice(len(big), 40, replace=False).tolist()}
    d = _defective(big, spec, rattle=0.1)
    t = time.perf_counter()
    m = match_to_host(d[rng.permutation(len(d))], big)
    assert time.perf_counter() - t < 5
    assert set(m.spec.vacancies) == set(spec["vacancies"])
