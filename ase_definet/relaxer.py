"""``DefiNetRelaxer``: DefiNet behind the interface of an ASE optimizer.

    from ase_definet import DefiNetRelaxer
    relaxer = DefiNetRelaxer(host, defects={"vacancies": [5], "substitutions": {0: "W"}})
    relaxer.run()
    relaxed = relaxer.atoms

One forward pass predicts the relaxed coordinates; the coordinates after each layer are
the relaxer's steps (logged, passed to observers, written to the trajectory). With
``run(fmax=...)`` and a calculator on the atoms, an ASE optimizer then polishes the
prediction until ``fmax`` (the paper's workflow: network, then a few DFT steps).
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch
from ase import Atoms
from ase.data import atomic_masses
from ase.io.trajectory import Trajectory
from ase.optimize.optimize import DEFAULT_MAX_STEPS
from ase.parallel import world
from ase.utils import IOContext

from .checkpoint import get_model
from .defects import SpecLike
from .matching import DEFAULT_TOLERANCE, describe
from .model import DefiNet
from .optimizers import get_optimizer
from .predict import check_stages, model_device, predict_sites
from .structure import DefectStructure

logger = logging.getLogger(__name__)


class DefiNetRelaxer(IOContext):
    """Relax a defect structure with DefiNet, used like an ASE optimizer.

    Args:
        atoms: the defective structure (updated in place, like any ASE optimizer), or
            the pristine host when ``defects`` is given (then left untouched and
            ``relaxer.atoms`` is a new defective structure).
        defects: vacancies and substitutions by host site index, a
            :class:`~ase_definet.DefectSpec` or ``{"vacancies": [...],
            "substitutions": {i: "W"}}``; ``atoms`` is then the pristine host.
        pristine: the pristine host of a defective ``atoms``; the defects are derived
            by periodic site matching (within ``tolerance`` Å). With neither
            ``defects`` nor ``pristine``, a registered host whose supercell matches
            ``atoms`` is looked for; failing that every atom is treated as a pristine
            site (no defect markers) and a warning is issued.
        model: a weights name (``"default"``), a checkpoint path or a ``DefiNet``.
        device: torch device; default ``$DEFINET_DEVICE``, else CUDA if present, else CPU.
        logfile: file name or open file; ``"-"`` is stdout, ``None`` silence.
        trajectory: file name or open :class:`ase.io.Trajectory`: the input, the
            coordinates after each layer, then each polish step.
        polish_optimizer: ASE optimizer (name or class) used by ``run(fmax=...)``.
        polish_kwargs: keyword arguments for the polish optimizer.
        tolerance: site-matching tolerance, Å.
        append_trajectory: append to an existing trajectory file instead of replacing it.
        stages: with weights that chain refinement stages, run only the first ones
            (faster, less accurate); default all.

    Raises:
        ValueError: a bad defect spec, an element the weights have never seen, a
            defective structure that does not match its host, a non-periodic or
            degenerate cell. The caller's atoms are untouched.
    """

    def __init__(self, atoms: Atoms, defects: SpecLike = None, pristine: Atoms | None = None,
                 model: str | Path | DefiNet = "default",
                 device: str | torch.device | None = None,
                 logfile: IO | str | Path | None = "-",
                 trajectory: str | Path | Trajectory | None = None, *,
                 polish_optimizer: str | type = "BFGS",
                 polish_kwargs: dict[str, Any] | None = None,
                 tolerance: float = DEFAULT_TOLERANCE, append_trajectory: bool = False,
                 stages: int | None = None):
        if not isinstance(atoms, Atoms):
            raise ValueError(f"atoms must be an ase.Atoms, got {type(atoms).__name__}")
        self.model = get_model(model, device)
        self.model_name = model if isinstance(model, (str, Path)) else type(model).__name__
        self.stages = check_stages(self.model, stages)
        elements = self.model.elements
        if defects is None and pristine is None:
            self.structure = _auto_structure(atoms, elements, tolerance)
        else:
            self.structure = DefectStructure.from_atoms(atoms, defects, pristine, elements,
                                                        tolerance)
        self.polish_optimizer = (get_optimizer(polish_optimizer)
                                 if isinstance(polish_optimizer, str) else polish_optimizer)
        self.polish_kwargs = dict(polish_kwargs or {})
        # --- nothing above touched the caller's objects; from here on we own state
        self.atoms = atoms if defects is None else _defective_from_host(atoms, self.structure)
        self.logfile = self.openfile(file=logfile, comm=world, mode="a")
        self.observers: list[tuple[Callable, int, tuple, dict]] = []
        self.nsteps = 0
        self.layers: np.ndarray | None = None  # (S*T+1, n_sites, 3) Å once predicted
        self.timings: dict[str, float] = {}
        self.polisher = None
        self.trajectory = None
        if trajectory is not None:
            if hasattr(trajectory, "write"):
                self.trajectory = trajectory
            else:
                mode = "a" if append_trajectory else "w"
                self.trajectory = self.closelater(Trajectory(trajectory, mode=mode))
            self.attach(self._write_frame)

    # ------------------------------------------------------------ ASE optimizer API
    def todict(self) -> dict[str, Any]:
        return {"type": "optimization", "optimizer": type(self).__name__,
                "model": str(self.model_name), "device": str(model_device(self.model)),
                "cutoff": self.model.cutoff, "max_neighbors": self.model.max_neighbors,
                "layers": self.model.config.layers,
                "refinement_stages": self.model.config.refine,
                "stages_run": self.stages or self.model.config.refine + 1,
                "polish_optimizer": self.polish_optimizer.__name__,
                "defects": describe(self.structure.spec, self.structure.pristine)}

    def attach(self, function: Callable, interval: int = 1, *args: Any, **kwargs: Any) -> None:
        """Call ``function(*args, **kwargs)`` every ``interval`` steps (ASE semantics:
        ``interval <= 0`` means only at step ``abs(interval)``)."""
        if not callable(function):
            function = function.write
        self.observers.append((function, interval, args, kwargs))

    def call_observers(self) -> None:
        for function, interval, args, kwargs in self.observers:
            if (interval > 0 and self.nsteps % interval == 0) or (
                    interval <= 0 and self.nsteps == abs(interval)):
                function(*args, **kwargs)

    def get_number_of_steps(self) -> int:
        return self.nsteps

    def irun(self, fmax: float | None = None, steps: int | None = None) -> Iterator[bool]:
        """Generator over steps: the input (step 0), each layer of the network, then
        (with ``fmax``) each polish step. Yields whether the relaxation is done:
        ``True`` after the last layer without ``fmax``, the polish optimizer's
        convergence flag with it. ``steps`` caps the polish steps."""
        if fmax is not None and self.atoms.calc is None:
            raise ValueError(f"run(fmax={fmax}) needs a calculator on the atoms to check "
                             "forces (polish mode); attach one, or call run() without fmax")
        if self.layers is None:
            self.layers = self._predict()
            start = self.structure.site_positions
            n_layers = len(self.layers) - 1
            for t, sites in enumerate(self.layers):
                if t > 0:
                    self.atoms.set_positions(self.structure.atom_positions(sites),
                                             apply_constraint=True)
                    self.nsteps += 1
                self._log_layer(t, sites, self.layers[max(t - 1, 0)], start)
                self.call_observers()
                yield fmax is None and t == n_layers
        if fmax is None:
            return
        yield from self._polish(fmax, DEFAULT_MAX_STEPS if steps is None else steps)

    def run(self, fmax: float | None = None, steps: int | None = None) -> bool:
        """Predict the relaxed structure (and polish it to ``fmax`` with the atoms'
        calculator if ``fmax`` is given). Returns whether it is done/converged."""
        converged = False
        for converged in self.irun(fmax=fmax, steps=steps):
            pass
        return converged

    # ------------------------------------------------------------ internals
    def _predict(self) -> np.ndarray:
        t0 = time.perf_counter()
        layers = predict_sites(self.model, [self.structure], all_layers=True,
                               stages=self.stages)[0]
        self.timings["predict"] = time.perf_counter() - t0
        return layers

    def _polish(self, fmax: float, steps: int) -> Iterator[bool]:
        if self.polisher is None:
            self.polisher = self.polish_optimizer(self.atoms, logfile=self.logfile,
                                                  **self.polish_kwargs)
        offset = self.nsteps - self.polisher.nsteps
        for converged in self.polisher.irun(fmax=fmax, steps=steps):
            if self.polisher.nsteps + offset > self.nsteps:
                self.nsteps = self.polisher.nsteps + offset
                self.call_observers()
            yield bool(converged)

    def _write_frame(self) -> None:
        self.trajectory.write(self.atoms)

    def _log_layer(self, t: int, sites: np.ndarray, prev: np.ndarray, start: np.ndarray) -> None:
        if self.logfile is None:
            return
        name = type(self).__name__
        idx = self.structure.spec.site_index(self.structure.n_sites)  # atoms, not vacancies
        shift = np.linalg.norm(sites[idx] - prev[idx], axis=1).max()
        total = np.linalg.norm(sites[idx] - start[idx], axis=1)
        if t == 0:
            self.logfile.write(f"{' ' * len(name)}  {'Step':>4} {'Time':>8} {'Shift[A]':>12} "
                               f"{'MaxDisp[A]':>12} {'RMSDisp[A]':>12}\n")
        now = time.strftime("%H:%M:%S")
        self.logfile.write(f"{name}:  {self.nsteps:4d} {now:>8} {shift:12.4f} "
                           f"{total.max():12.4f} {np.sqrt((total ** 2).mean()):12.4f}\n")
        if hasattr(self.logfile, "flush"):
            self.logfile.flush()


def _auto_structure(atoms: Atoms, elements: list[int], tolerance: float) -> DefectStructure:
    """Neither defects nor pristine given: try the registered hosts, else no markers."""
    from .data.hosts import find_host
    from .validate import check_atoms

    check_atoms(atoms)
    found = find_host(atoms, tolerance)
    if found is not None:
        host, pristine = found
        structure = DefectStructure.from_pair(atoms, pristine, elements, tolerance)
        logger.info("atoms matched the built-in host %s: %s", host.name,
                    describe(structure.spec, pristine))
        return structure
    warnings.warn("DefiNetRelaxer: neither defects= nor pristine= was given and atoms match "
                  "no registered host; every atom is treated as a pristine site (no defect "
                  "markers, vacancies invisible). Pass pristine=HOST for a defect-aware "
                  "prediction.", UserWarning, stacklevel=3)
    return DefectStructure.from_host(atoms, None, elements)


def _defective_from_host(host: Atoms, structure: DefectStructure) -> Atoms:
    """A new defective Atoms from the caller's host: cell, pbc, info, per-atom arrays
    (tags, ...), constraints and calculator are kept; vacant sites removed."""
    idx = structure.spec.site_index(len(host))
    at = host[idx]  # copies info, arrays and re-indexes constraints
    numbers = structure.spec.site_numbers(host)[idx]
    changed = at.numbers != numbers
    at.numbers = numbers
    if "masses" in at.arrays:
        at.arrays["masses"][changed] = atomic_masses[numbers[changed]]
    at.calc = host.calc
    return at
