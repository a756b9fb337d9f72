"""Relax many defect structures through one forward pass per batch."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Union

import torch
from ase import Atoms
from tqdm.auto import tqdm

from .checkpoint import get_model
from .defects import DefectSpec
from .inputs import is_pymatgen_structure, like_input, prepare, to_atoms
from .matching import DEFAULT_TOLERANCE
from .model import DefiNet
from .predict import check_stages, predict_sites
from .structure import DefectStructure

logger = logging.getLogger(__name__)

Item = Union[Atoms, tuple[Atoms, Union[DefectSpec, dict, None]], tuple[Atoms, Atoms],
             DefectStructure, Any]


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
               compile: bool = False, stages: int | None = None) -> list[Any]:
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

    Every item is validated before any computation; a bad item raises ``ValueError``
    naming its index.
    """
    net = get_model(model, device)
    stages = check_stages(net, stages)
    jobs = []
    for k, item in enumerate(items):
        try:
            jobs.append(_job(item, net.elements, tolerance))
        except ValueError as err:
            raise ValueError(f"item {k}: {err}") from None
    out: list[Any] = []
    chunks: Sequence[range] = [range(a, min(a + batch_size, len(jobs)))
                               for a in range(0, len(jobs), max(1, batch_size))]
    with tqdm(total=len(jobs), desc="DefiNet", unit="structure",
              disable=not progress) as bar:
        for rng in chunks:
            batch = [jobs[i] for i in rng]
            predicted = predict_sites(net, [s for s, _, _ in batch], compile=compile,
                                      stages=stages)
            for (s, target, template), sites in zip(batch, predicted):
                if template is None:  # a DefectStructure: host order, host frame
                    target.positions = sites[s.spec.site_index(s.n_sites)]
                else:
                    target.set_positions(s.atom_positions(sites), apply_constraint=True)
                out.append(like_input(target, template))
            bar.update(len(batch))
    return out
