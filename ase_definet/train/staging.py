"""Train the last refinement stage alone, on the earlier stages' predictions.

When only the last stage of a model with refinement stages (``DefiNetConfig.refine``)
is trained, the earlier stages are frozen, so what they predict for each pair never
changes. The trainer computes it once, moves every pair's start there
(:meth:`~ase_definet.train.dataset.Sample.moved_to`) and trains the last stage as a
one-stage DefiNet on the moved pairs: the same training, without running the frozen
stages in every step.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from contextlib import closing

import numpy as np
import torch
from tqdm.auto import tqdm

from ..core.predict import iter_layer_outputs
from ..model import DefiNet
from .dataset import PairDataset, Sample, iter_batches


def _predictions(model: DefiNet, dataset: PairDataset, stages: int | None, batch_size: int,
                 device: torch.device | str | None, progress: bool, desc: str
                 ) -> Iterator[tuple[Sample, np.ndarray]]:
    """(sample, the prediction (n_sites, 3) Å of the first ``stages`` stages of
    ``model``) for every sample of ``dataset``, in order."""
    k = 0
    batches = tqdm(iter_batches(dataset, batch_size, shuffle=False),
                   total=-(-len(dataset) // batch_size), desc=desc, unit="batch",
                   disable=None if progress else True)
    with closing(iter_layer_outputs(model, batches, stages=stages, device=device)) as outputs:
        for _, out in outputs:
            pred = out.layers[-1].double().cpu().numpy()
            for sl in out.slices:
                yield dataset[k], pred[sl].copy()
                k += 1


def staged_dataset(model: DefiNet, dataset: PairDataset, stages: int, batch_size: int = 16,
                   device: torch.device | str | None = None, progress: bool = True
                   ) -> PairDataset:
    """``dataset`` with every pair starting from the prediction of the first ``stages``
    stages of ``model`` (targets, masks and the defect regions unchanged)."""
    return PairDataset([s.moved_to(p) for s, p in _predictions(
        model, dataset, stages, batch_size, device, progress, f"stages 1-{stages}")])


def distilled_dataset(model: DefiNet, dataset: PairDataset, batch_size: int = 16,
                      device: torch.device | str | None = None, progress: bool = True
                      ) -> PairDataset:
    """``dataset`` with ``model``'s prediction of every pair as its ``soft`` target
    (computed once: without input noise it is the same in every epoch)."""
    return PairDataset([dataclasses.replace(s, soft=p) for s, p in _predictions(
        model, dataset, None, batch_size, device, progress, "distilled targets")])
