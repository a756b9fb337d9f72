"""Function-preserving widening of a trained DefiNet (Net2WiderNet, Chen et al. 2016).

A checkpoint of width F becomes one of width r*F that computes the same coordinates:
every feature channel is copied r times, and every linear map that reads features splits
each input weight over the r copies with random shares that sum to one. Because the
copies of a channel carry equal values, the split does not change any output; because the
shares differ from weight to weight, the copies receive different gradients and grow
apart in training, so the extra width is not wasted.

Everything in DefiNet that mixes channels is a linear map, a channel-wise operation, or a
mean over channels (LayerNorm, the vector RMS norm), and a mean over r equal copies is the
mean over the originals, so the copy is exact (up to float rounding).
"""

from __future__ import annotations

import torch

from .definet import DefiNet

# embedding tables: their feature axis is copied but is not an input to split
_EMBEDDINGS = ("element_embedding.weight", "marker_embedding.weight")


def _copy_index(size: int, F: int, r: int) -> torch.Tensor:
    """Old index of each new index along an axis of k blocks of F channels, where each
    block becomes r*F channels: (k*r*F,)."""
    j = torch.arange(size * r)
    return (j // (r * F)) * F + (j % (r * F)) % F


def widen_model(model: DefiNet, factor: int, seed: int = 0, spread: float = 0.5) -> DefiNet:
    """A DefiNet ``factor`` times as wide that computes the same output as ``model``.

    Args:
        model: a trained DefiNet of width F.
        factor: integer r >= 1; the result has width r*F.
        seed: seed of the random input shares.
        spread: the shares of one input weight are ``1/r * (1 + spread * u)``, u uniform
            in [-1, 1], renormalised to sum to one over the copies.

    Returns:
        A new DefiNet (same device and dtype); ``model`` is left unchanged.
    """
    r = int(factor)
    if r < 1 or r != factor:
        raise ValueError(f"the widening factor must be a positive integer, got {factor}")
    if model.config.refine:
        raise ValueError("widen a model before adding refinement stages, not after")
    F = model.config.hidden
    wide = model.blank_like(hidden=r * F)
    gen = torch.Generator().manual_seed(seed)
    new_state = {}
    wide_state = wide.state_dict()
    # which axes are feature axes is read off the shapes of the wide model itself: the
    # radial basis, scalar heads and embedding rows keep their sizes and are left alone
    for name, old in model.state_dict().items():
        target = wide_state[name]
        if target.shape == old.shape:  # rbf centres, scalar heads' biases, ...
            new_state[name] = old.clone()
            continue
        t = old
        linear_weight = t.dim() == 2 and name.endswith(".weight") and name not in _EMBEDDINGS
        for axis in range(t.dim()):
            if t.shape[axis] == target.shape[axis]:
                continue
            if t.shape[axis] * r != target.shape[axis] or t.shape[axis] % F:
                raise ValueError(f"cannot widen {name} {tuple(old.shape)} -> "
                                 f"{tuple(target.shape)}")
            t = t.index_select(axis, _copy_index(t.shape[axis], F, r).to(t.device))
            if linear_weight and axis == 1:  # an input axis: split over the copies
                u = torch.rand(t.shape, generator=gen).to(t.device, t.dtype) * 2 - 1
                share = 1.0 + spread * u
                blocks = share.reshape(t.shape[0], -1, r, F)  # (out, k, r, F)
                share = (blocks / blocks.sum(dim=2, keepdim=True)).reshape(t.shape)
                t = t * share
        new_state[name] = t.contiguous()
    wide.load_state_dict(new_state)
    return wide
