"""Evaluation per lattice axis, and the count of structures predicted worse than their
unrelaxed input."""

from __future__ import annotations

import numpy as np

from ase_definet.core.defects import DefectSpec
from ase_definet.data.store import Pair
from ase_definet.train.dataset import PairDataset
from ase_definet.train.evaluate import evaluate_model, format_table, pair_name, write_csv
from ase_definet.train.metrics import ErrorAccumulator, sample_groups

from .conftest import small_host, tiny_model


def test_axis_groups_only_for_pairs_that_record_an_axis():
    assert "axis=strain" in sample_groups({"material": "BP", "density": "low",
                                           "axis": "strain"})
    assert "BP/axis=strain" in sample_groups({"material": "BP", "axis": "strain"})
    assert not any("axis" in g for g in sample_groups({"material": "BP", "density": "low"}))


def _pairs(rng, axis, n=3):
    out = []
    for k in range(n):
        host = small_host(3)
        spec = DefectSpec(vacancies=(4,))
        unrelaxed = spec.apply(host)
        relaxed = unrelaxed.positions + rng.normal(0, 0.01, unrelaxed.positions.shape)
        info = {"material": "MoS2", "density": "high", "axis": axis, "split": "test",
                "config_id": f"{axis}-{k}"}
        out.append(Pair(unrelaxed, relaxed, host, spec, info))
    return out


def test_worse_than_input_is_counted_per_group(tmp_path, rng):
    model = tiny_model(displacement_init=1.0)  # large random moves: worse than the input
    pairs = _pairs(rng, "strain") + _pairs(rng, "size", 2)
    ds = PairDataset.from_pairs(pairs, model.cutoff, model.max_neighbors, progress=False)
    acc, _ = evaluate_model(model, ds)
    assert acc.structures["axis=strain"] == 3 and acc.structures["axis=size"] == 2
    assert acc.worse["overall"] == 5 and acc.worse["MoS2/axis=size"] == 2
    table = format_table(acc)
    row = next(line for line in table.splitlines() if line.startswith("axis=strain"))
    assert row.split()[-2:] == ["3", "3"]
    assert float(row.split()[-4]) > 1.0  # MAE / Dummy above one
    listed = [line for line in table.splitlines() if line.startswith("worse than input: ")]
    assert len(listed) == 5 == len(acc.worse_structures)
    assert any("strain-0 (strain" in line for line in listed)
    gaps = [float(line.split("MAE ")[1].split()[0]) - float(line.split("Dummy ")[1].split()[0])
            for line in listed]
    assert gaps == sorted(gaps, reverse=True)  # furthest from the input first
    assert pair_name({}, 7) == "pair 7"
    assert pair_name({"config_id": "c", "supercell": "6x6"}, 7) == "c (6x6)"
    short = format_table(acc, max_listed=2).splitlines()
    assert sum(line.startswith("worse than input: ") for line in short) == 3
    assert short[-1] == "worse than input: 3 more"
    write_csv(acc, tmp_path / "e.csv")
    head, *rows = (tmp_path / "e.csv").read_text().splitlines()
    assert rows[0].split(",")[-2:] == ["5", "5"]  # overall
    assert head.split(",")[-2:] == ["n_structures", "n_worse_than_input"]
    still = ErrorAccumulator()
    still.add_structure(["g"], 0.01, 0.02, name="fine")
    still.add_structure(["g"], 0.03, 0.02, name="off")
    assert still.worse["g"] == 1 and still.structures["g"] == 2
    assert still.worse_structures == [("off", 0.03, 0.02)]
    assert np.isfinite(acc.mae("axis=size"))


def test_cold_only_drops_warm_started_labels(rng):
    from ase_definet.train.evaluate import cold_only

    model = tiny_model()
    pairs = _pairs(rng, "strain", 3)
    pairs[0].info["label_start"] = "prediction"
    pairs[1].info["label_start"] = "unrelaxed"  # pairs[2]: no record, made cold
    ds = PairDataset.from_pairs(pairs, model.cutoff, model.max_neighbors, progress=False)
    kept = cold_only(ds)
    assert [s.info["config_id"] for s in kept.samples] == ["strain-1", "strain-2"]


def test_evaluate_scores_the_first_stages_on_request(rng):
    import pytest

    model = tiny_model(refine=2, displacement_init=0.1).eval()
    ds = PairDataset.from_pairs(_pairs(rng, "strain"), model.cutoff, model.max_neighbors,
                                progress=False)
    full, _ = evaluate_model(model, ds)
    last, _ = evaluate_model(model, ds, stages=3)
    first, _ = evaluate_model(model, ds, stages=1)
    assert last.mae("overall", "all") == full.mae("overall", "all")
    assert first.mae("overall", "all") != full.mae("overall", "all")
    assert first.mae("overall", "dummy_all") == full.mae("overall", "dummy_all")
    with pytest.raises(ValueError, match="from 1 to 3"):
        evaluate_model(model, ds, stages=4)
