"""Label a defect configuration with any ASE calculator: fixed-cell relaxation."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from ase import Atoms
from ase.calculators.calculator import Calculator

from ..core.optimizers import OPTIMIZERS, get_optimizer

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


def relax_from(atoms: Atoms, start: np.ndarray, calc: Calculator, fmax: float = 0.01,
               steps: int = 1500, optimizer: str = "FIRE") -> Relaxation:
    """Like :func:`relax_fixed_cell`, but the optimizer starts from ``start`` (n, 3) Å
    (e.g. a model's prediction: a *warm start*); ``initial_energy`` and
    ``initial_forces`` are still those at the positions of ``atoms``. ``atoms`` is not
    modified; ``steps`` counts the optimizer's steps from ``start``."""
    at = atoms.copy()
    at.calc = calc
    e0, f0 = float(at.get_potential_energy()), at.get_forces().copy()
    moved = atoms.copy()
    moved.positions = np.asarray(start, dtype=float)
    res = relax_fixed_cell(moved, calc, fmax=fmax, steps=steps, optimizer=optimizer)
    return Relaxation(positions=res.positions, energy=res.energy, fmax=res.fmax,
                      initial_energy=e0, initial_forces=f0, steps=res.steps,
                      converged=res.converged)


def predicted_start(model, pristine: Atoms, spec) -> np.ndarray:
    """A model's prediction for ``spec.apply(pristine)``: (n_atoms, 3) Å in the same
    (host) order, the warm start of :func:`relax_from`."""
    from ..core.predict import predict_sites
    from ..core.structure import DefectStructure

    structure = DefectStructure.from_host(pristine, spec)
    sites = predict_sites(model, [structure])[0]
    return structure.defective_atoms(sites).positions
