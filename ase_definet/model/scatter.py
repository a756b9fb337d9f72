"""Scatter-sum and scatter-mean over the first dimension.

The default backend is torch's own ``index_add_``. When the optional ``torch_scatter``
package is installed (``pip install --no-build-isolation torch-scatter``) it is used
automatically for CUDA tensors; on the CPU torch's ``index_add_`` measured 2x faster
(59 vs 114 ms per 8x8 MoS2 forward pass, F=64, 1 thread; compare with
``benchmarks/benchmark.py --sizes 8 --no-teacher --scatter native`` and
``--scatter torch_scatter``), so "auto" keeps it there.
Both give the same numbers (tested). Choose explicitly with :func:`set_backend`.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator

import torch

BACKENDS = ("auto", "native", "torch_scatter")
_backend = "auto"


def has_torch_scatter() -> bool:
    return importlib.util.find_spec("torch_scatter") is not None


def set_backend(name: str) -> None:
    """Select ``"auto"`` (torch_scatter on CUDA when installed), ``"native"`` or
    ``"torch_scatter"``."""
    global _backend
    if name not in BACKENDS:
        raise ValueError(f"unknown scatter backend {name!r}; choose from {list(BACKENDS)}")
    if name == "torch_scatter" and not has_torch_scatter():
        raise ImportError("torch_scatter is not installed: pip install 'ase_definet[scatter]'")
    _backend = name


def get_backend(device: torch.device | str = "cuda") -> str:
    """The backend used for tensors on ``device`` (``"native"`` or ``"torch_scatter"``)."""
    if _backend == "auto":
        cuda = torch.device(device).type == "cuda"
        return "torch_scatter" if cuda and has_torch_scatter() else "native"
    return _backend


def scatter_sum(src: torch.Tensor, index: torch.Tensor, dim_size: int,
                out: torch.Tensor | None = None) -> torch.Tensor:
    """``out[index[k]] += src[k]`` along dim 0.

    Args:
        src: (E, ...) values.
        index: (E,) int64 target rows.
        dim_size: number of rows of the result.
        out: optional (dim_size, ...) accumulator, added to (not in place under autograd).
    """
    if get_backend(src.device) == "torch_scatter":
        import torch_scatter

        res = torch_scatter.scatter(src, index, dim=0, dim_size=dim_size, reduce="sum")
        return res if out is None else out + res
    if out is None:
        out = src.new_zeros((dim_size, *src.shape[1:]))
        return out.index_add_(0, index, src)
    if not torch.is_grad_enabled():  # inference: accumulate in place
        return out.index_add_(0, index, src)
    return out.index_add(0, index, src)


def scatter_mean(src: torch.Tensor, index: torch.Tensor, dim_size: int) -> torch.Tensor:
    """Mean of the rows of ``src`` per ``index`` value; empty groups give zero."""
    if get_backend(src.device) == "torch_scatter":
        import torch_scatter

        return torch_scatter.scatter(src, index, dim=0, dim_size=dim_size, reduce="mean")
    total = scatter_sum(src, index, dim_size)
    count = torch.bincount(index, minlength=dim_size).clamp_(min=1).to(src.dtype)
    return total / count.view(-1, *([1] * (src.dim() - 1)))


def edge_slices(n_edges: int, chunk: int) -> Iterator[slice]:
    """Consecutive slices of at most ``chunk`` edges covering ``range(n_edges)``: the one
    chunked edge loop of the layers (bounded temporaries on large graphs)."""
    for s in range(0, n_edges, chunk):
        yield slice(s, min(s + chunk, n_edges))
