"""ASE optimizers by name: used to polish DefiNet's prediction and to label pairs."""

from __future__ import annotations

from ase.optimize import BFGS, FIRE, LBFGS
from ase.optimize.optimize import Optimizer

OPTIMIZERS: dict[str, type[Optimizer]] = {"FIRE": FIRE, "BFGS": BFGS, "LBFGS": LBFGS}


def get_optimizer(name: str) -> type[Optimizer]:
    """ASE optimizer class by name; the error lists the valid names."""
    try:
        return OPTIMIZERS[name]
    except KeyError:
        raise ValueError(f"unknown optimizer {name!r}; choose from {sorted(OPTIMIZERS)}") from None
