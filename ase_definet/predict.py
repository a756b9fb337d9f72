"""Inference: DefectStructures in, coordinates out (one forward pass per batch)."""

from __future__ import annotations

import numbers
from collections.abc import Sequence

import numpy as np
import torch

from .graph import collate
from .model import DefiNet
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


def predict_sites(model: DefiNet, structures: Sequence[DefectStructure],
                  all_layers: bool = False, compile: bool = False,
                  stages: int | None = None) -> list[np.ndarray]:
    """Relaxed coordinates of every site of every structure.

    Returns, per structure, an array (n_sites, 3) Å, or with ``all_layers`` the
    coordinates after every layer (S*T+1, n_sites, 3) of the S stages run, layer 0
    being the input. ``compile`` runs the forward pass through :func:`compiled`.
    ``stages`` runs only the first stages of a model with refinement stages (faster,
    less accurate; default all).
    """
    stages = check_stages(model, stages)
    graphs = [s.graph(model.cutoff, model.max_neighbors) for s in structures]
    dtype, device = model_dtype(model), model_device(model)
    batch = collate(graphs, dtype=dtype).to(device)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            layers = (compiled(model) if compile else model)(batch, stages=stages)
            # displacements in the model's dtype, added to the float64 input coordinates
            out = (torch.stack(layers) if all_layers else layers[-1]) - layers[0]
            out = out.to("cpu", torch.float64).numpy()
    finally:
        model.train(was_training)
    sizes = np.cumsum([0] + [g.n_sites for g in graphs])
    result = [s.site_positions + out[..., a:b, :]
              for s, a, b in zip(structures, sizes[:-1], sizes[1:])]
    for k, positions in enumerate(result):
        check_prediction(positions, k)
    return result
