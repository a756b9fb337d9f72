"""Relax many defect structures through one forward pass per batch."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Union

import torch
from ase import Atoms
from tqdm.auto import tqdm

from .checkpoint import get_model
from .defects import DefectSpec
from .matching import DEFAULT_TOLERANCE
from .model import DefiNet
from .predict import check_stages, predict_sites
from .structure import DefectStructure

logger = logging.getLogger(__name__)

Item = Union[Atoms, tuple[Atoms, Union[DefectSpec, dict, None]], tuple[Atoms, Atoms],
             DefectStructure]


def to_structure(item: Item, elements: list[int] | None = None,
                 tolerance: float = DEFAULT_TOLERANCE) -> DefectStructure:
    """``(host, spec)``, ``(defective, pristine)``, a ``DefectStructure``, or a defective
    Atoms of a registered host -> :class:`DefectStructure`."""
    if isinstance(item, DefectStructure):
        return item
    if isinstance(item, tuple) and len(item) == 2:
        first, second = item
        if isinstance(second, Atoms):
            return DefectStructure.from_pair(first, second, elements, tolerance)
        return DefectStructure.from_host(first, second, elements)
    if isinstance(item, Atoms):
        from .relaxer import _auto_structure

        return _auto_structure(item, elements or [], tolerance)
    raise ValueError(f"cannot relax an item of type {type(item).__name__}: give (host, spec), "
                     "(defective, pristine), a DefectStructure or an Atoms")


def relax_many(items: Iterable[Item], model: str | Path | DefiNet = "default",
               device: str | torch.device | None = None, batch_size: int = 32,
               progress: bool = True, tolerance: float = DEFAULT_TOLERANCE,
               compile: bool = False, stages: int | None = None) -> list[Atoms]:
    """Relax a list of defect structures, ``batch_size`` per forward pass.

    Args:
        items: each ``(host, spec)`` or ``(defective, pristine)`` (see
            :func:`to_structure`).
        model: weights name, checkpoint path or ``DefiNet``.
        batch_size: structures per forward pass.
        compile: use ``torch.compile`` (pays off for hundreds of structures).
        stages: run only the first refinement stages of the weights (default all).

    Returns:
        The relaxed defective structures, new Atoms in host order with vacancies
        removed (inputs are not modified). Every item is validated before any computation; a bad item raises
        ``ValueError`` naming its index.
    """
    net = get_model(model, device)
    stages = check_stages(net, stages)
    structures: list[DefectStructure] = []
    for k, item in enumerate(items):
        try:
            structures.append(to_structure(item, net.elements, tolerance))
        except ValueError as err:
            raise ValueError(f"item {k}: {err}") from None
    out: list[Atoms] = []
    chunks: Sequence[range] = [range(a, min(a + batch_size, len(structures)))
                               for a in range(0, len(structures), max(1, batch_size))]
    with tqdm(total=len(structures), desc="DefiNet", unit="structure",
              disable=not progress) as bar:
        for rng in chunks:
            batch = [structures[i] for i in rng]
            for s, sites in zip(batch, predict_sites(net, batch, compile=compile,
                                                     stages=stages)):
                out.append(s.defective_atoms(sites))
            bar.update(len(batch))
    return out
