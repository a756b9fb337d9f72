"""Building blocks of DefiNet: MLPs, radial basis, the consensus vector activation."""

from __future__ import annotations

import math

import torch
from torch import nn


class MLP(nn.Sequential):
    """Linear -> SiLU -> Linear."""

    def __init__(self, n_in: int, n_hidden: int, n_out: int):
        super().__init__(nn.Linear(n_in, n_hidden), nn.SiLU(), nn.Linear(n_hidden, n_out))


class GaussianRBF(nn.Module):
    """Gaussian radial basis times a cosine cutoff envelope.

    ``forward(d)``: distances (E,) Å -> (E, n_rbf); zero for d >= cutoff, smooth at it.
    """

    def __init__(self, n_rbf: int, cutoff: float):
        super().__init__()
        self.cutoff = float(cutoff)
        self.register_buffer("centers", torch.linspace(0.0, cutoff, n_rbf))
        self.width = float(cutoff) / max(n_rbf - 1, 1)

    def forward(self, d: torch.Tensor) -> torch.Tensor:
        arg = -0.5 * ((d[:, None] - self.centers) / self.width) ** 2
        # exp below e^-80 (~1e-35) is set to 0: left alone it gives float32 denormals,
        # which slowed the whole forward pass (the matmuls after it) by ~1.6x on the CPU.
        # The mask is the product with sign(arg + 80), exact after the clamp (0 where
        # clamped, 1 elsewhere; zero gradient) and cheaper than a comparison and a where.
        arg = arg.clamp(min=-80.0)
        rbf = torch.exp(arg) * torch.sign(arg + 80.0)
        env = 0.5 * (torch.cos(d * (math.pi / self.cutoff)) + 1.0) * (d < self.cutoff)
        return rbf * env[:, None]


class ConsensusActivation(nn.Module):
    """Non-linear vector activation (paper, equations 12-13).

    A consensus vector ``c = W_p v`` is formed per node; each mixed vector
    ``y_j = W^j v`` that disagrees with it gets ``c`` added. The hard rule
    ``y_j + c [<c, y_j> <= 0]`` is discontinuous, so float rounding near
    ``<c, y_j> = 0`` can flip it between a structure and its rotated copy. With
    ``tau > 0`` the step is replaced by ``sigmoid(-cos(c, y_j) / tau)``, a smooth,
    scale-free version (``tau = 0`` gives the paper's hard rule).

    ``forward(v)``: (n, 3, F) -> (n, 3, F), rotation-equivariant.
    """

    def __init__(self, n_features: int, tau: float = 0.05):
        super().__init__()
        self.consensus = nn.Linear(n_features, 1, bias=False)
        self.mix = nn.Linear(n_features, n_features, bias=False)
        self.tau = float(tau)

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        c = self.consensus(v)  # (n, 3, 1)
        y = self.mix(v)  # (n, 3, F)
        dot = (c * y).sum(dim=1, keepdim=True)  # (n, 1, F)
        if self.tau <= 0:
            return torch.where(dot > 0, y, y + c)
        norm = torch.sqrt((c * c).sum(dim=1, keepdim=True) * (y * y).sum(dim=1, keepdim=True)
                          + 1e-18)
        return y + c * torch.sigmoid(-dot / (norm * self.tau))


def vector_norm(v: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Norm over the Cartesian axis of (n, 3, F) features -> (n, F); smooth at zero."""
    return torch.sqrt((v * v).sum(dim=1) + eps)


class VectorLayerNorm(nn.Module):
    """Scale (n, 3, F) vector features by their root-mean-square norm over the F
    channels (rotation-equivariant), with a learnable per-channel gain."""

    def __init__(self, n_features: int, eps: float = 1e-6):
        super().__init__()
        self.gain = nn.Parameter(torch.ones(n_features))
        self.eps = eps

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        rms = torch.sqrt((v * v).sum(dim=1).mean(dim=-1, keepdim=True) + self.eps)  # (n, 1)
        return v * (self.gain / rms)[:, None, :]
