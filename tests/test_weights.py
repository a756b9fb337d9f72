"""The shipped weights: load by name, carry their settings, card and honest metadata."""

from __future__ import annotations

import numpy as np
import pytest

from ase_definet import DefiNetRelaxer, available_weights, get_model, load_checkpoint
from ase_definet.cli import main as cli
from ase_definet.core.checkpoint import weights_dir
from ase_definet.core.hosts import get_host


def test_default_weights_are_shipped():
    assert "default" in available_weights()


@pytest.mark.parametrize("name", available_weights())
def test_named_weights_load_by_name_with_card(name):
    model = get_model(name, "cpu")
    assert model.cutoff > 0 and model.max_neighbors
    assert {16, 42} <= set(model.elements)  # S and Mo: the demo host
    _, meta = load_checkpoint(weights_dir().joinpath(f"{name}.safetensors"))
    assert "CHGNet" in meta["data"]["description"] and "Not DFT" in meta["data"]["description"]
    assert meta["test_metrics"]["overall"]["all"] < meta["test_metrics"]["overall"]["dummy_all"]
    card = weights_dir().joinpath(f"{name}.md").read_text()
    assert "CHGNet" in card and "## Test metrics" in card


def test_default_model_is_the_relaxer_default_and_moves_atoms_near_defects(capsys):
    host = get_host("MoS2").pristine()
    r = DefiNetRelaxer(host, defects={"vacancies": [1]}, logfile=None)
    r.run()
    start = host.positions[r.structure.spec.site_index(len(host))]
    d = np.linalg.norm(r.atoms.positions - start, axis=1)
    near = host.get_distances(1, r.structure.spec.site_index(len(host)), mic=True) < 3.5
    assert d[near].mean() > 2 * d[~near].mean()  # a trained model relaxes the defect region
    assert cli(["demo"]) == 0
    assert "Atoms that moved most" in capsys.readouterr().out


@pytest.mark.parametrize("name", available_weights())
def test_named_weights_carry_a_verified_checksum(name):
    from safetensors import safe_open
    from safetensors.torch import load_file

    from ase_definet.core.checkpoint import tensors_sha256

    path = str(weights_dir().joinpath(f"{name}.safetensors"))
    with safe_open(path, framework="pt") as f:
        digest = f.metadata()["sha256"]
    assert tensors_sha256(load_file(path)) == digest  # what load_checkpoint verifies


def test_weights_are_found_from_a_source_tree_that_is_not_installed(monkeypatch):
    """``python -m pytest`` in a clone imports the source tree, where the weights are the
    repository's ``weights/`` folder, not a package."""
    from ase_definet.core import checkpoint

    def no_package(name):
        raise ModuleNotFoundError(name)

    monkeypatch.setattr(checkpoint.resources, "files", no_package)
    assert (checkpoint.weights_dir() / "default.safetensors").is_file()
    assert "default" in checkpoint.available_weights()
