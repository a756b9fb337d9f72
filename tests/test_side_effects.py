"""Library code leaves global state alone: the matplotlib backend, torch's seed, threads
and deterministic mode belong to the entry points."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ase_definet import DefectSpec, DefectStructure
from ase_definet.train import TrainConfig, Trainer

from .conftest import small_host
from .test_train import cfg, datasets


def test_plots_leave_the_matplotlib_backend_alone(tmp_path):
    matplotlib = pytest.importorskip("matplotlib")
    from ase_definet.plot import plot_comparison, plot_field
    from ase_definet.train.evaluate import plot_parity

    host = small_host(3)
    s = DefectStructure.from_host(host, DefectSpec(vacancies=(1,), substitutions={0: "W"}))
    start = s.site_positions[s.spec.site_index(s.n_sites)]
    pred = start + 0.01
    backend = matplotlib.get_backend()
    matplotlib.use("svg")  # a caller's backend (not Agg)
    try:
        plot_field(s, pred, tmp_path / "f.png")
        plot_comparison(s, pred, start, tmp_path / "c.png")
        n = 20
        plot_parity({"true": np.zeros((n, 3)), "pred": np.full((n, 3), 0.01),
                     "near": np.linspace(0, 5, n)}, tmp_path / "p.png")
        assert matplotlib.get_backend() == "svg"
    finally:
        matplotlib.use(backend)
    for name in ("f.png", "c.png", "p.png"):
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG"


def test_trainer_leaves_torch_global_state_alone(tmp_path):
    train, val = datasets()
    threads = torch.get_num_threads()
    deterministic = torch.are_deterministic_algorithms_enabled()
    torch.manual_seed(1234)
    rng = torch.get_rng_state()
    a = Trainer(cfg(tmp_path / "a", threads=1, deterministic=True, seed=5), train, val)
    assert torch.equal(torch.get_rng_state(), rng)  # neither seeded nor consumed
    assert torch.get_num_threads() == threads
    assert torch.are_deterministic_algorithms_enabled() == deterministic
    torch.manual_seed(99)  # another caller state: the same initial weights from seed=5
    b = Trainer(cfg(tmp_path / "b", seed=5), train, val)
    for k, v in a.model.state_dict().items():
        assert torch.equal(v, b.model.state_dict()[k]), k


def test_set_up_torch_is_what_the_entry_point_sets():
    from ase_definet.train.trainer import set_up_torch

    threads = torch.get_num_threads()
    before = (torch.are_deterministic_algorithms_enabled(),
              torch.is_deterministic_algorithms_warn_only_enabled())
    try:
        set_up_torch(TrainConfig(seed=7, threads=1, deterministic=True))
        assert torch.initial_seed() == 7 and torch.get_num_threads() == 1
        assert torch.are_deterministic_algorithms_enabled()
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])
