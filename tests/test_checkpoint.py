"""Checkpoints: safetensors round trip, metadata, names, errors, no pickle."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ase_definet import DefectStructure, get_model, load_checkpoint, save_checkpoint
from ase_definet.core.checkpoint import read_metadata, stored_checksum, weights_label
from ase_definet.core.predict import predict_sites

from .conftest import tiny_model


def test_round_trip(tmp_path, host, spec):
    model = tiny_model(cutoff=4.5, max_neighbors=17, elements=[16, 34, 42, 74])
    path = save_checkpoint(model, tmp_path / "m.safetensors",
                           {"data": "unit test", "metrics": {"mae": 0.1}})
    loaded, meta = load_checkpoint(path)
    assert meta == {"data": "unit test", "metrics": {"mae": 0.1}}
    assert loaded.cutoff == 4.5 and loaded.max_neighbors == 17
    assert loaded.elements == [16, 34, 42, 74]
    s = DefectStructure.from_host(host, spec)
    a = predict_sites(model, [s])[0]
    b = predict_sites(loaded, [s])[0]
    assert np.array_equal(a, b)
    cfg, meta2 = read_metadata(path)
    assert cfg.hidden == 32 and meta2 == meta
    # the file is safetensors: its header is JSON, no pickle opcodes
    raw = path.read_bytes()
    assert raw[8:9] == b"{" and b"\x80\x04" not in raw[:64]


def test_weights_label_names_version_and_checksum(tmp_path):
    model = tiny_model()
    plain = save_checkpoint(model, tmp_path / "a.safetensors", {"data": "x"})
    named = save_checkpoint(model, tmp_path / "b.safetensors", {"weights_version": "v7"})
    digest = stored_checksum(plain)
    assert len(digest) == 64 and stored_checksum(named) == digest  # same tensors
    assert weights_label(plain) == f"unversioned, sha256 {digest[:12]}"
    assert weights_label(named) == f"v7, sha256 {digest[:12]}"
    with torch.no_grad():
        next(model.parameters()).add_(1.0)
    other = save_checkpoint(model, tmp_path / "c.safetensors", {})
    assert weights_label(other) != weights_label(plain)


def test_errors(tmp_path):
    with pytest.raises(ValueError, match="no weights named 'nope'; available"):
        get_model("nope")
    with pytest.raises(ValueError, match="does not exist"):
        get_model(str(tmp_path / "missing.safetensors"))
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a readable DefiNet checkpoint"):
        load_checkpoint(junk)
    with pytest.raises(ValueError, match="must be a weights name"):
        get_model(42)


def test_atomic_save_keeps_old_file_on_failure(tmp_path, monkeypatch):
    model = tiny_model()
    path = save_checkpoint(model, tmp_path / "m.safetensors")
    before = path.read_bytes()

    def boom(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr("ase_definet.core.checkpoint.save_file", boom)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(tiny_model(seed=1), path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.safetensors"]


def test_extend_elements_keeps_known_rows():
    model = tiny_model(elements=[16, 42])
    old = model.element_embedding.weight.detach().clone()
    added = model.extend_elements([42, 74, 16])
    assert added == [74] and model.elements == [16, 42, 74]
    w = model.element_embedding.weight.detach()
    assert torch.equal(w[0], old[0]) and torch.equal(w[1], old[1])
    idx = model.element_index(torch.tensor([74, 16]))
    assert idx.tolist() == [2, 0]
    with pytest.raises(ValueError, match=r"\['Fe'\]"):
        model.element_index(torch.tensor([26]))
