"""``DefiNetRelaxer``: DefiNet behind the interface of an ASE optimizer.

    from ase_definet import DefiNetRelaxer
    relaxer = DefiNetRelaxer(host, defects={"vacancies": [5], "substitutions": {0: "W"}})
    relaxer.run()
    relaxed = relaxer.atoms

What a step is. One forward pass predicts the relaxed coordinates: that prediction is
the relaxer's starting point, step 0 (like the initial force call of an ASE optimizer;
logged as one line, passed to the observers, written to the trajectory). With
``run(fmax=...)`` and a calculator on the atoms, an ASE optimizer then polishes the
prediction until ``fmax`` (the paper's workflow: network, then a few DFT steps); each of
its steps is a step of the relaxer, so ``nsteps`` counts force calls after the first,
as for any ASE optimizer. The network's layers are not steps: ``per_layer=True`` logs
one line and writes one trajectory frame per layer.
"""

from __future__ import annotations

import bisect
import copy
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch
from ase import Atoms
from ase.io.trajectory import Trajectory
from ase.optimize.optimize import DEFAULT_MAX_STEPS, Optimizer
from ase.parallel import world

from .core import trust
from .core.checkpoint import shared_model
from .core.defects import SpecLike
from .core.inputs import like_input, prepare, to_atoms
from .core.matching import DEFAULT_TOLERANCE, describe
from .core.optimizers import get_optimizer
from .core.predict import check_stages, model_device, predict_sites
from .core.trust import assess, domain_reasons
from .model import DefiNet

logger = logging.getLogger(__name__)


class DefiNetRelaxer(Optimizer):
    """Relax a defect structure with DefiNet, used like an ASE optimizer.

    An :class:`ase.optimize.optimize.Optimizer`: ``run(fmax=None, steps=...)`` returns
    whether it is done (True on a second call too), ``irun()``, ``converged()``,
    ``attach()``, ``nsteps``, ``todict()``, ``logfile``, ``trajectory``, context manager.
    Every argument after ``atoms`` is keyword-only.

    Args:
        atoms: the defective structure (updated in place, like any ASE optimizer), or
            the pristine host when ``defects`` is given (then left untouched and
            ``relaxer.atoms`` is a new defective structure). An ``ase.Atoms`` or a
            pymatgen ``Structure`` (converted; the Structure itself is not modified and
            :attr:`relaxed` gives the result as a Structure).
        defects: vacancies and substitutions by host site index, a
            :class:`~ase_definet.DefectSpec` or ``{"vacancies": [...],
            "substitutions": {i: "W"}}``; ``atoms`` is then the pristine host.
        pristine: the pristine host of a defective ``atoms`` (Atoms or Structure); the
            defects are derived by periodic site matching within ``tolerance`` Å, after
            removing any rigid offset between the two (up to ``tolerance``). With
            neither ``defects`` nor ``pristine``, ``atoms`` is matched to the built-in
            hosts by composition and in-plane lattice (any supercell, vacuum, origin or
            cell basis); failing that a ``ValueError`` says what to pass.
        marker_free: predict with every atom marked pristine (no host, vacancies
            invisible to the network); only without ``defects`` and ``pristine``.
        model: a weights name (``"default"``), a checkpoint path or a ``DefiNet``. A
            name or path gives this relaxer a model of its own (loaded once per process,
            copied per relaxer); a ``DefiNet`` instance is used as it is.
        device: torch device; default ``$DEFINET_DEVICE``, else CUDA if present, else CPU.
        logfile: file name or open file; ``"-"`` is stdout, ``None`` silence. One line in
            ASE's format for the prediction (step 0: largest and RMS displacement, Å),
            then the polish optimizer's lines.
        trajectory: file name or open :class:`ase.io.Trajectory`: the input, the
            prediction (step 0), then each polish step.
        append_trajectory: append to an existing trajectory file instead of replacing it.
        per_layer: also log a line and write a frame after every network layer (between
            the input and the prediction).
        polish_optimizer: ASE optimizer (name or class) used by ``run(fmax=...)``.
        polish_kwargs: keyword arguments for the polish optimizer.
        tolerance: site-matching tolerance, Å.
        stages: with weights that chain refinement stages, run only the first ones
            (faster, less accurate); default all.
        check_range: warn (:class:`~ase_definet.core.trust.OutOfRangeWarning`) when the
            structure lies outside the weights' training domain (an element pair or a
            lattice never seen, a defect kind never seen) or the prediction's mean
            uncertainty is above the calibrated threshold; the reasons are kept in
            :attr:`out_of_range` and ``todict()``.
        polish_from_lower: in polish mode, evaluate the calculator's energy at the
            input and at the prediction and polish from the lower (kept in
            :attr:`polish_start`); False always polishes from the prediction.

    After the prediction, :attr:`uncertainty` is an array (len(atoms),) Å: the expected
    error of each atom's predicted position (calibrated per checkpoint, see
    ``definet calibrate``), and :attr:`bound90` the bound 90 % of errors stay below.

    Raises:
        ValueError: a bad defect spec, an element the weights have never seen, a
            defective structure that does not match its host (or no built-in host), a
            non-periodic or degenerate cell. The caller's atoms are untouched.
    """

    def __init__(self, atoms: Atoms | Any, *, defects: SpecLike = None,
                 pristine: Atoms | Any | None = None,
                 model: str | Path | DefiNet = "default",
                 device: str | torch.device | None = None,
                 logfile: IO | str | Path | None = "-",
                 trajectory: str | Path | Trajectory | None = None,
                 append_trajectory: bool = False, per_layer: bool = False,
                 polish_optimizer: str | type = "BFGS",
                 polish_kwargs: dict[str, Any] | None = None,
                 tolerance: float = DEFAULT_TOLERANCE, stages: int | None = None,
                 marker_free: bool = False, check_range: bool = True,
                 polish_from_lower: bool = True, master: bool | None = None, comm=world):
        self._input = atoms
        user_atoms = to_atoms(atoms, "atoms")
        host = None if pristine is None else to_atoms(pristine, "pristine")
        self._own_model: DefiNet | None = model if isinstance(model, DefiNet) else None
        # named weights: predict with the process's cached instance (no copy per relaxer)
        # until ``self.model`` hands out a copy of this relaxer's own
        self._net = shared_model(model, device)
        self.model_name = model if isinstance(model, (str, Path)) else type(model).__name__
        self.stages = check_stages(self._net, stages)
        self.polish_optimizer = (get_optimizer(polish_optimizer)
                                 if isinstance(polish_optimizer, str) else polish_optimizer)
        self.polish_kwargs = dict(polish_kwargs or {})
        self.structure, target = prepare(user_atoms, defects, host, self._net.elements,
                                         tolerance, marker_free)
        # --- nothing above touched the caller's objects; from here on we own state
        super().__init__(atoms=target, logfile=logfile, trajectory=trajectory,
                         append_trajectory=append_trajectory, master=master, comm=comm)
        self.per_layer = bool(per_layer)
        self.layers: np.ndarray | None = None  # (L+1, n_sites, 3) Å once predicted
        self.timings: dict[str, float] = {}
        self.polisher: Optimizer | None = None
        self.check_range = bool(check_range)
        self.polish_from_lower = bool(polish_from_lower)
        self.polish_start: str | None = None  # "prediction" or "input" once polishing
        self.energies: dict[str, float] = {}  # eV at "input" and "prediction"
        self.uncertainty: np.ndarray | None = None  # (n_atoms,) Å after the prediction
        self.bound90: np.ndarray | None = None
        self.uncertainty_calibrated: bool | None = None
        self.out_of_range: list[str] = []
        if self.check_range:
            self.out_of_range = domain_reasons(self._net, self.structure)
            trust.warn(self.out_of_range)

    # ------------------------------------------------------------ ASE optimizer API
    @property
    def model(self) -> DefiNet:
        """This relaxer's network: the ``DefiNet`` passed in, or for named weights a copy
        of its own (made on first access; later predictions of this relaxer use it, so
        changes to it apply here and nowhere else)."""
        if self._own_model is None:
            self._own_model = self._net = copy.deepcopy(self._net)
        return self._own_model

    @property
    def relaxed(self) -> Atoms | Any:
        """The relaxed structure as the type passed: ``self.atoms`` for an Atoms, a new
        pymatgen Structure for a Structure."""
        return like_input(self.atoms, self._input)

    def todict(self) -> dict[str, Any]:
        return {**super().todict(),
                "model": str(self.model_name), "device": str(model_device(self._net)),
                "cutoff": self._net.cutoff, "max_neighbors": self._net.max_neighbors,
                "layers": self._net.config.layers,
                "refine_layers": self._net.refiner_layers,
                "refinement_stages": self._net.config.refine,
                "stages_run": self.stages or self._net.config.refine + 1,
                "polish_optimizer": self.polish_optimizer.__name__,
                "defects": describe(self.structure.spec, self.structure.pristine),
                "out_of_range": list(self.out_of_range),
                "uncertainty_calibrated": self.uncertainty_calibrated,
                "mean_uncertainty": (None if self.uncertainty is None
                                     else float(self.uncertainty.mean())),
                "polish_start": self.polish_start}

    def irun(self, fmax: float | None = None, steps: int = DEFAULT_MAX_STEPS
             ) -> Iterator[bool]:
        """Generator over steps: the prediction (step 0; made once), then, with
        ``fmax``, the polish optimizer's steps. Yields whether the relaxation is done:
        ``True`` after the prediction without ``fmax``, the polish optimizer's
        convergence flag with it (one flag per step, step 0 included, as in ASE).
        ``steps`` caps the polish steps of this call (the prediction is always made)."""
        if fmax is not None and self.atoms.calc is None:
            raise ValueError(f"run(fmax={fmax}) needs a calculator on the atoms to check "
                             "forces (polish mode); attach one, or call run() without fmax")
        steps = DEFAULT_MAX_STEPS if steps is None else int(steps)
        if steps < 0:
            raise ValueError(f"steps must be >= 0, got {steps}")
        self.fmax = fmax
        if self.layers is None:
            self._relax_network()
        if fmax is None:
            self.max_steps = self.nsteps
            yield True
            return
        if self.polisher is None:
            self._choose_polish_start()
            self.polisher = self.polish_optimizer(self.atoms, logfile=self.logfile,
                                                  **self.polish_kwargs)
        self.max_steps = self.nsteps + steps
        for converged in self.polisher.irun(fmax=fmax, steps=steps):
            if self.polisher.nsteps > self.nsteps:
                self.nsteps = self.polisher.nsteps
                self.call_observers()
            yield bool(converged)

    def run(self, fmax: float | None = None, steps: int = DEFAULT_MAX_STEPS) -> bool:
        """Predict the relaxed structure (once), and with ``fmax`` polish it with the
        atoms' calculator for at most ``steps`` steps. Returns whether it is done:
        without ``fmax`` True once predicted, with it whether the forces are below
        ``fmax``."""
        converged = False
        for flag in self.irun(fmax=fmax, steps=steps):
            converged = flag
        return converged

    def converged(self, forces: np.ndarray | None = None) -> bool:
        """Done? Before the prediction False; without ``fmax`` (the last run's) True
        once predicted; with it whether the forces are below ``fmax``."""
        if self.layers is None:
            return False
        if self.fmax is None:
            return True
        return bool(super().converged(forces))

    def step(self) -> None:
        """One step of the polish optimizer (after the prediction, made if needed)."""
        if self.atoms.calc is None:
            raise ValueError("step() is a polish step and needs a calculator on the atoms")
        if self.layers is None:
            self._relax_network()
        if self.polisher is None:
            self._choose_polish_start()
            self.polisher = self.polish_optimizer(self.atoms, logfile=self.logfile,
                                                  **self.polish_kwargs)
        self.polisher.step()

    def log(self, *args: Any) -> None:
        """The prediction's line (ASE's format; displacements in place of energy and
        fmax, which would need a force call)."""
        name = type(self).__name__
        disp = np.linalg.norm(self.atoms.positions - self._start, axis=1)
        if self.nsteps == 0:
            self.logfile.write(f"{' ' * len(name)}  {'Step':>4} {'Time':>8} "
                               f"{'MaxDisp[A]':>15}  {'RMSDisp[A]':>12}\n")
        self.logfile.write(f"{name}:  {self.nsteps:3d} {time.strftime('%H:%M:%S')} "
                           f"{disp.max():15.6f} {np.sqrt((disp ** 2).mean()):15.6f}\n")

    # ------------------------------------------------------------ internals
    def _relax_network(self) -> None:
        """The prediction: trajectory frame of the input, one forward pass, positions
        set (constraints respected), log line(s), observers at step 0."""
        if self.trajectory is not None:
            self._write_frame(self.atoms)
        self._start = self.atoms.positions.copy()
        t0 = time.perf_counter()
        self.layers = predict_sites(self._net, [self.structure], all_layers=True,
                                    stages=self.stages)[0]
        self.timings["predict"] = time.perf_counter() - t0
        stages_run = self.stages or self._net.config.refine + 1
        judged = assess(self._net, self.structure, self.layers, stages_run)
        self.uncertainty, self.bound90 = judged.uncertainty, judged.bound90
        self.uncertainty_calibrated = judged.calibrated
        if self.check_range and judged.reasons:
            self.out_of_range += judged.reasons
            trust.warn(judged.reasons)
        if self.per_layer:
            self._log_layers()
        self.atoms.set_positions(self.structure.atom_positions(self.layers[-1]),
                                 apply_constraint=True)
        self.log()
        self.call_observers()

    def _choose_polish_start(self) -> None:
        """Polish from the lower-energy of the input and the prediction (one energy
        call each), unless ``polish_from_lower`` is off; logged and kept."""
        self.polish_start = "prediction"
        if not self.polish_from_lower:
            return
        predicted = self.atoms.positions.copy()
        e_pred = float(self.atoms.get_potential_energy())
        self.atoms.set_positions(self._start, apply_constraint=False)
        e_in = float(self.atoms.get_potential_energy())
        self.energies = {"input": e_in, "prediction": e_pred}
        if e_in < e_pred:
            self.polish_start = "input"
            logger.warning("the prediction's energy (%.4f eV) is above the input's "
                           "(%.4f eV): polishing from the input", e_pred, e_in)
        else:
            self.atoms.set_positions(predicted, apply_constraint=False)
        logger.info("polish starts from the %s (E_input %.4f eV, E_prediction %.4f eV)",
                    self.polish_start, e_in, e_pred)

    def _frame(self, sites: np.ndarray) -> Atoms:
        frame = self.atoms.copy()  # no calculator: no stale results in the frame
        frame.set_positions(self.structure.atom_positions(sites), apply_constraint=True)
        return frame

    def _write_frame(self, atoms: Atoms) -> None:
        opentraj = getattr(self, "_opentraj", None)  # ASE >= 3.25 opens it per write
        if opentraj is None:
            self.trajectory.write(atoms)
            return
        with opentraj() as traj:
            traj.write(atoms)

    def _log_layers(self) -> None:
        """One line per network layer (and a frame each before the last, which is the
        prediction): its largest shift, the largest and RMS displacement so far, Å."""
        name = type(self).__name__
        ends = self._net.stage_ends()
        self.logfile.write(f"{' ' * len(name)}  {'':5} {'layer':>5} {'stage':>5} "
                           f"{'Shift[A]':>12} {'MaxDisp[A]':>12} {'RMSDisp[A]':>12}\n")
        prev = self._start
        for t, sites in enumerate(self.layers[1:], start=1):
            pos = self._frame(sites).positions
            shift = np.linalg.norm(pos - prev, axis=1).max()
            disp = np.linalg.norm(pos - self._start, axis=1)
            stage = bisect.bisect_left(ends, t) + 1
            self.logfile.write(f"{name}:  {'layer':>5} {t:5d} {stage:5d} {shift:12.6f} "
                               f"{disp.max():12.6f} {np.sqrt((disp ** 2).mean()):12.6f}\n")
            if self.trajectory is not None and t < len(self.layers) - 1:
                self._write_frame(self._frame(sites))
            prev = pos
