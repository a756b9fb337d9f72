"""Relax many defect structures through one forward pass per batch."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ase import Atoms
from tqdm.auto import tqdm

from .core.checkpoint import shared_model
from .core.defects import DefectSpec
from .core.inputs import is_pymatgen_structure, like_input, prepare, to_atoms
from .core.matching import DEFAULT_TOLERANCE
from .core.predict import check_stages, predict_sites
from .core.structure import DefectStructure
from .core.trust import assess, domain_reasons, warn
from .model import DefiNet

logger = logging.getLogger(__name__)

class RelaxResults(list):
    """The results of :func:`relax_many` (a list, in the order of the items), with

    Attributes:
        uncertainty: per result, (n_atoms,) Å, the expected error of each atom's
            predicted position (as :attr:`DefiNetRelaxer.uncertainty`).
        bound90: per result, (n_atoms,) Å, the bound 90 % of errors stay below.
        out_of_range: per result, the reasons it is out of the weights' range (each
            also issued as an :class:`~ase_definet.core.trust.OutOfRangeWarning`).
    """

    def __init__(self) -> None:
        super().__init__()
        self.uncertainty: list[np.ndarray] = []
        self.bound90: list[np.ndarray] = []
        self.out_of_range: list[list[str]] = []


Item = Atoms | tuple[Atoms, DefectSpec | dict | None] | tuple[Atoms, Atoms] | DefectStructure | Any


def _job(item: Item, elements: list[int] | None, tolerance: float
         ) -> tuple[DefectStructure, Atoms, Any]:
    """``(structure, target, template)``: what to predict, the new Atoms the result goes
    into (exactly what :class:`DefiNetRelaxer` would give, without a calculator) and
    the object whose type the result takes."""
    if isinstance(item, DefectStructure):
        return item, item.defective_atoms(), None
    if isinstance(item, tuple) and len(item) == 2:
        first, second = item
        atoms = to_atoms(first, "the first element of an item")
        if isinstance(second, Atoms) or is_pymatgen_structure(second):
            structure, target = prepare(atoms, None, to_atoms(second, "pristine"),
                                        elements, tolerance)
        else:
            structure, target = prepare(atoms, second if second is not None else {}, None,
                                        elements, tolerance)
        template = first
    elif isinstance(item, Atoms) or is_pymatgen_structure(item):
        structure, target = prepare(to_atoms(item), None, None, elements, tolerance)
        template = item
    else:
        raise ValueError(f"cannot relax an item of type {type(item).__name__}: give "
                         "(host, spec), (defective, pristine), a DefectStructure, or a "
                         "defective Atoms or Structure of a built-in host")
    target = target.copy()  # never the caller's atoms; copy() drops the calculator
    return structure, target, template


def to_structure(item: Item, elements: list[int] | None = None,
                 tolerance: float = DEFAULT_TOLERANCE) -> DefectStructure:
    """``(host, spec)``, ``(defective, pristine)``, a ``DefectStructure``, or a defective
    Atoms (or pymatgen Structure) of a built-in host -> :class:`DefectStructure`."""
    return _job(item, elements, tolerance)[0]


def relax_many(items: Iterable[Item], model: str | Path | DefiNet = "default",
               device: str | torch.device | None = None, batch_size: int = 32,
               progress: bool = True, tolerance: float = DEFAULT_TOLERANCE,
               compile: bool = False, stages: int | None = None,
               check_range: bool = True) -> RelaxResults:
    """Relax a list of defect structures, ``batch_size`` per forward pass.

    Each result is what ``DefiNetRelaxer`` gives for that item, to float tolerance:
    positions (atoms fixed by ``FixAtoms`` stay put), atom order (a ``(defective,
    pristine)`` item keeps its own order; ``(host, spec)`` gives host order with the
    vacant sites removed), info, per-atom arrays and constraints; no calculator is
    attached. Results are new objects of the type passed (Atoms, or a pymatgen
    Structure); the inputs are not modified.

    Args:
        items: each ``(host, spec)``, ``(defective, pristine)``, a defective structure
            of a built-in host, or a ``DefectStructure`` (then host order, host frame).
        model: weights name, checkpoint path or ``DefiNet``.
        batch_size: structures per forward pass.
        compile: use ``torch.compile`` (pays off for hundreds of structures; pass the
            same ``DefiNet`` from ``get_model`` to reuse the compiled model across calls).
        stages: run only the first refinement stages of the weights (default all).
        check_range: warn about structures out of the weights' range (as the relaxer).

    Returns:
        a :class:`RelaxResults` list, which also carries each result's ``uncertainty``,
        ``bound90`` and ``out_of_range`` reasons.

    Every item is validated before any computation; a bad item raises ``ValueError``
    naming its index.
    """
    net = shared_model(model, device)  # read-only use: no copy per call
    stages = check_stages(net, stages)
    jobs = []
    for k, item in enumerate(items):
        try:
            jobs.append(_job(item, net.elements, tolerance))
        except ValueError as err:
            raise ValueError(f"item {k}: {err}") from None
    out = RelaxResults()
    stages_run = stages or net.config.refine + 1
    chunks: Sequence[range] = [range(a, min(a + batch_size, len(jobs)))
                               for a in range(0, len(jobs), max(1, batch_size))]
    with tqdm(total=len(jobs), desc="DefiNet", unit="structure",
              disable=not progress) as bar:
        for rng in chunks:
            batch = [jobs[i] for i in rng]
            predicted = predict_sites(net, [s for s, _, _ in batch], compile=compile,
                                      stages=stages, all_layers=True)
            for (s, target, template), layers in zip(batch, predicted):
                sites = layers[-1]
                host_order = s.spec.site_index(s.n_sites) if template is None else None
                judged = assess(net, s, layers, stages_run, host_order)
                reasons = (domain_reasons(net, s) + judged.reasons) if check_range else []
                warn(reasons)
                out.uncertainty.append(judged.uncertainty)
                out.bound90.append(judged.bound90)
                out.out_of_range.append(reasons)
                if template is None:  # a DefectStructure: host order, host frame
                    target.positions = sites[s.spec.site_index(s.n_sites)]
                else:
                    target.set_positions(s.atom_positions(sites), apply_constraint=True)
                out.append(like_input(target, template))
            bar.update(len(batch))
    return out
