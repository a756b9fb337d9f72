"""Train the last refinement stage alone, on the earlier stages' predictions.

When only the last stage of a model with refinement stages (``DefiNetConfig.refine``)
is trained, the earlier stages are frozen, so what they predict for each pair never
changes. The trainer computes it once, moves every pair's start there
(:meth:`~ase_definet.train.dataset.Sample.moved_to`) and trains the last stage as a
one-stage DefiNet on the moved pairs: the same training, without running the frozen
stages in every step.
"""

from __future__ import annotations

from contextlib import closing

import torch
from tqdm.auto import tqdm

from ..core.predict import iter_layer_outputs
from ..model import DefiNet
from .dataset import PairDataset, iter_batches


def staged_dataset(model: DefiNet, dataset: PairDataset, stages: int, batch_size: int = 16,
                   device: torch.device | str | None = None, progress: bool = True
                   ) -> PairDataset:
    """``dataset`` with every pair starting from the prediction of the first ``stages``
    stages of ``model`` (targets, masks and the defect regions unchanged)."""
    moved = []
    k = 0
    batches = tqdm(iter_batches(dataset, batch_size, shuffle=False),
                   total=-(-len(dataset) // batch_size), desc=f"stages 1-{stages}",
                   unit="batch", disable=None if progress else True)
    with closing(iter_layer_outputs(model, batches, stages=stages, device=device)) as outputs:
        for _, out in outputs:
            pred = out.layers[-1].double().cpu().numpy()
            for sl in out.slices:
                moved.append(dataset[k].moved_to(pred[sl].copy()))
                k += 1
    return PairDataset(moved)
