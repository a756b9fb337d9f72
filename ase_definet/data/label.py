"""Label a defect configuration with any ASE calculator: fixed-cell relaxation."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from ase import Atoms
from ase.calculators.calculator import Calculator

from ..optimizers import OPTIMIZERS, get_optimizer

__all__ = ["OPTIMIZERS", "Relaxation", "get_optimizer", "relax_fixed_cell"]


@dataclass
class Relaxation:
    """Result of a fixed-cell relaxation."""

    positions: np.ndarray  # (n, 3) Å
    energy: float  # eV, at ``positions``
    fmax: float  # eV/Å, final max force
    initial_energy: float  # eV, at the input positions
    initial_forces: np.ndarray  # (n, 3) eV/Å, at the input positions
    steps: int
    converged: bool


def relax_fixed_cell(atoms: Atoms, calc: Calculator, fmax: float = 0.01,
                     steps: int = 1500, optimizer: str = "FIRE") -> Relaxation:
    """Relax the positions of a copy of ``atoms`` (cell fixed) until max force < ``fmax``.

    ``atoms`` is not modified. ``steps`` caps the number of optimizer steps.
    """
    at = atoms.copy()
    at.calc = calc
    e0, f0 = float(at.get_potential_energy()), at.get_forces().copy()
    opt = get_optimizer(optimizer)(at, logfile=None)
    converged = bool(opt.run(fmax=fmax, steps=steps))
    forces = at.get_forces()
    return Relaxation(positions=at.positions.copy(), energy=float(at.get_potential_energy()),
                      fmax=float(np.linalg.norm(forces, axis=1).max()),
                      steps=int(opt.nsteps), converged=converged,
                      initial_energy=e0, initial_forces=f0)
