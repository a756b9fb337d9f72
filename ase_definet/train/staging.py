"""Train the last refinement stage alone, on the earlier stages' predictions.

When only the last stage of a model with refinement stages (``DefiNetConfig.refine``)
is trained, the earlier stages are frozen, so what they predict for each pair never
changes. The trainer computes it once, moves every pair's start there
(:meth:`~ase_definet.train.dataset.Sample.moved_to`) and trains the last stage as a
one-stage DefiNet on the moved pairs: the same training, without running the frozen
stages in every step.
"""

from __future__ import annotations

import numpy as np
import torch
from tqdm.auto import tqdm

from ..model import DefiNet
from .dataset import PairDataset, iter_batches


@torch.inference_mode()
def staged_dataset(model: DefiNet, dataset: PairDataset, stages: int, batch_size: int = 16,
                   device: torch.device | str | None = None, progress: bool = True
                   ) -> PairDataset:
    """``dataset`` with every pair starting from the prediction of the first ``stages``
    stages of ``model`` (targets, masks and the defect regions unchanged)."""
    device = device if device is not None else next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    was = model.training
    model.eval()
    moved = []
    k = 0
    for batch in tqdm(iter_batches(dataset, batch_size, shuffle=False),
                      total=-(-len(dataset) // batch_size), desc=f"stages 1-{stages}",
                      unit="batch", disable=None if progress else True):
        pred = model(batch.graph.to(device, dtype), stages=stages)[-1]
        pred = pred.double().cpu().numpy()
        sizes = np.bincount(batch.graph.batch.numpy(), minlength=batch.graph.num_graphs)
        for start, n in zip(np.cumsum(sizes) - sizes, sizes):
            moved.append(dataset[k].moved_to(pred[start:start + n].copy()))
            k += 1
    model.train(was)
    return PairDataset(moved)
