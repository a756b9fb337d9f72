"""One place that decides the torch device."""

from __future__ import annotations

import os

import torch

ENV_VAR = "DEFINET_DEVICE"


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """Explicit argument, then ``$DEFINET_DEVICE``, then CUDA if present, then CPU.

    Raises ``ValueError`` for an unparsable name or CUDA requested where there is none.
    """
    name = device if device is not None else os.environ.get(ENV_VAR) or None
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"invalid device {name!r}: {err}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        src = "argument" if device is not None else f"${ENV_VAR}"
        raise ValueError(f"device {name!r} (from the {src}) requested but CUDA is not available")
    return dev
