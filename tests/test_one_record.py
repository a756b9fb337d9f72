"""One record of a defect structure, one graph builder: training builds the graph that
inference builds, and the host detection matches the atoms once."""

from __future__ import annotations

import numpy as np

from ase_definet.core import matching
from ase_definet.core.checkpoint import get_model
from ase_definet.core.defects import DefectSpec
from ase_definet.core.hosts import get_host
from ase_definet.core.inputs import prepare
from ase_definet.core.predict import predict_sites
from ase_definet.core.structure import DefectStructure
from ase_definet.data.store import Pair
from ase_definet.train.dataset import pair_to_sample


def test_training_graph_is_the_inference_graph(rng):
    host = get_host("MoS2").pristine()
    spec = DefectSpec(vacancies=(3, 50), substitutions={0: "W", 7: "Se"})
    unrelaxed = spec.apply(host)
    noise = rng.normal(0, 0.05, unrelaxed.positions.shape)
    unrelaxed.positions += noise - noise.mean(axis=0)  # no rigid offset to remove
    pair = Pair(unrelaxed, unrelaxed.positions + 0.01, host, spec, {"material": "MoS2"})
    sample = pair_to_sample(pair, 6.0, 24)
    # what the relaxer builds for the same (defective, pristine) structure
    inference = DefectStructure.from_pair(unrelaxed, host).graph(6.0, 24)
    for key in ("numbers", "markers", "edge_index", "shifts"):
        assert np.array_equal(getattr(sample.graph, key), getattr(inference, key)), key
    assert np.allclose(sample.graph.positions, inference.positions, atol=1e-12)
    assert sample.mask.sum() == len(unrelaxed) and (~sample.mask).sum() == 2


def test_detected_host_is_matched_once(monkeypatch):
    host = get_host("WSe2").pristine()
    spec = DefectSpec(vacancies=(5,), substitutions={2: "S"})
    defective = spec.apply(host)
    defective.positions += [0.3, -0.2, 0.1]  # another origin
    calls = {"detection": 0, "structure": 0}
    real = matching.match_to_host

    def counting(where):
        def match(*args, **kwargs):
            calls[where] += 1
            return real(*args, **kwargs)
        return match

    import ase_definet.core.hostmatch as hostmatch
    import ase_definet.core.structure as structure

    monkeypatch.setattr(hostmatch, "match_to_host", counting("detection"))
    monkeypatch.setattr(structure, "match_to_host", counting("structure"))
    s, _ = prepare(defective, None, None)
    assert s.spec == spec
    assert calls["detection"] >= 1 and calls["structure"] == 0  # the detection's match
    ref = DefectStructure.from_pair(defective, host)
    assert np.allclose(s.atom_positions(s.site_positions), defective.positions)
    model = get_model("default")
    mine, theirs = predict_sites(model, [s, ref])
    assert np.abs(s.atom_positions(mine) - ref.atom_positions(theirs)).max() < 1e-4
