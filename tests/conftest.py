"""Shared, seeded, small fixtures."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import mx2

from ase_definet import DefiNet


def small_host(n: int = 3) -> Atoms:
    """A 2H-MoS2 n x n monolayer supercell (c = 12 Å), periodic in 3D."""
    at = mx2("MoS2", kind="2H", a=3.19, thickness=3.13, vacuum=4.5) * (n, n, 1)
    at.pbc = True
    return at


@pytest.fixture
def host() -> Atoms:
    return small_host(3)


@pytest.fixture
def spec() -> dict:
    return {"vacancies": [4, 10], "substitutions": {0: "W", 5: "Se"}}


def tiny_model(seed: int = 0, dtype: torch.dtype = torch.float32, **kw) -> DefiNet:
    torch.manual_seed(seed)
    kw = {"hidden": 32, "layers": 3, "cutoff": 5.0, "max_neighbors": 24,
          "displacement_init": 1.0, **kw}  # full-size random displacements: a hard test
    return DefiNet(**kw).to(dtype)


@pytest.fixture
def model() -> DefiNet:
    return tiny_model()


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(42)
