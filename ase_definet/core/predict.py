"""Inference: DefectStructures in, coordinates out (one forward pass per batch).

:func:`iter_layer_outputs` is the one batched inference loop of the package: prediction
(:func:`predict_sites`), evaluation, staged training and calibration all run through it.
"""

from __future__ import annotations

import numbers
from collections.abc import Iterable, Iterator, Sequence
from contextlib import closing
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import torch

from ..graph import GraphBatch, collate
from ..model import DefiNet
from .structure import DefectStructure
from .validate import check_prediction


def model_dtype(model: DefiNet) -> torch.dtype:
    return next(model.parameters()).dtype


def model_device(model: DefiNet) -> torch.device:
    return next(model.parameters()).device


def compiled(model: DefiNet):
    """``torch.compile(model, dynamic=True)``, made once per model and kept on it.

    Worth it for many forward passes (screening, benchmarks): measured 1.9x faster on
    an 8x8 MoS2 cell (F=64, 1 CPU thread) after about a minute of compilation
    (``benchmarks/benchmark.py --sizes 8 --no-teacher [--compile]``).
    """
    fn = getattr(model, "_definet_compiled", None)
    if fn is None:
        fn = torch.compile(model, dynamic=True)
        object.__setattr__(model, "_definet_compiled", fn)  # not a registered submodule
    return fn


def check_stages(model: DefiNet, stages: int | None) -> int | None:
    """``stages`` if the model has that many (1 .. 1 + refine), else ``ValueError``."""
    n = model.config.refine + 1
    if stages is None:
        return None
    if (isinstance(stages, bool) or not isinstance(stages, numbers.Integral)
            or not 1 <= stages <= n):
        raise ValueError(f"stages must be an integer from 1 to {n} for these weights "
                         f"({n} stage(s)), got {stages!r}")
    return int(stages)


@dataclass(frozen=True)
class BatchOutput:
    """What the model computed for one batch of structures.

    Attributes:
        layers: the coordinates after every layer, ``[r^(0), ..., r^(L)]`` for the
            stages run (``DefiNet.stage_ends``), each (N, 3) Å over the N sites of the
            batch, in the model's dtype on its device; ``r^(0)`` is the input.
        sizes: (B,) number of sites of each structure, in batch order.
    """

    layers: list[torch.Tensor]
    sizes: np.ndarray

    @property
    def slices(self) -> list[slice]:
        """Each structure's rows of the (N, ...) site arrays, in batch order."""
        ends = np.cumsum(self.sizes)
        return [slice(int(e - n), int(e)) for e, n in zip(ends, self.sizes)]


B = TypeVar("B")


def iter_layer_outputs(model: DefiNet, batches: Iterable[B], *, stages: int | None = None,
                       compile: bool = False, device: torch.device | str | None = None
                       ) -> Iterator[tuple[B, BatchOutput]]:
    """One forward pass per batch: yields ``(batch, BatchOutput)`` for every item of
    ``batches``.

    An item is a :class:`~ase_definet.graph.GraphBatch` (on the CPU) or anything with
    such a ``graph`` attribute (a training ``Batch``); its graph is moved to ``device``
    (default: the model's) and cast to the model's dtype. The forward pass runs in eval
    mode under :func:`torch.inference_mode` (entered for the forward only, not across
    the ``yield``); the model's train/eval mode is restored in ``finally``, also on an
    error. Close the generator when leaving early (``with contextlib.closing(...)``) so
    that the mode is restored at once. ``stages`` and ``compile`` as in
    :func:`predict_sites`.
    """
    stages = check_stages(model, stages)
    dtype = model_dtype(model)
    device = device if device is not None else model_device(model)
    forward = compiled(model) if compile else model
    # eval() and train() walk every submodule (milliseconds on three stages): only when
    # some module is in training mode
    training = [m for m in model.modules() if m.training]
    for m in training:
        m.eval()
    try:
        for item in batches:
            graph: GraphBatch = item if isinstance(item, GraphBatch) else item.graph
            with torch.inference_mode():
                layers = forward(graph.to(device, dtype), stages=stages)
            sizes = np.bincount(graph.batch.cpu().numpy(), minlength=graph.num_graphs)
            yield item, BatchOutput(layers=layers, sizes=sizes)
    finally:
        for m in training:
            m.train()


def predict_sites(model: DefiNet, structures: Sequence[DefectStructure],
                  all_layers: bool = False, compile: bool = False,
                  stages: int | None = None) -> list[np.ndarray]:
    """Relaxed coordinates of every site of every structure.

    Returns, per structure, an array (n_sites, 3) Å, or with ``all_layers`` the
    coordinates after every layer (L+1, n_sites, 3) of the stages run, layer 0
    being the input. ``compile`` runs the forward pass through :func:`compiled`.
    ``stages`` runs only the first stages of a model with refinement stages (faster,
    less accurate; default all).
    """
    stages = check_stages(model, stages)
    graphs = [s.graph(model.cutoff, model.max_neighbors) for s in structures]
    batch = collate(graphs, dtype=model_dtype(model))
    with closing(iter_layer_outputs(model, [batch], stages=stages,
                                    compile=compile)) as outputs:
        [(_, output)] = outputs
    layers = output.layers
    # displacements in the model's dtype, added to the float64 input coordinates
    out = (torch.stack(layers) if all_layers else layers[-1]) - layers[0]
    out = out.to("cpu", torch.float64).numpy()
    result = [s.site_positions + out[..., sl, :]
              for s, sl in zip(structures, output.slices)]
    for k, positions in enumerate(result):
        check_prediction(positions, k)
    return result
