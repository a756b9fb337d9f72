"""Data generation: host registry, defect configurations, teacher labels, pair databases,
the 2DMD folder layout. ``read_2dmd``, ``iter_2dmd`` and ``write_2dmd`` are loaded on
first use, so importing the host registry (``ase_definet.core.hosts``) from the
inference core does not import data generation."""

from __future__ import annotations

from typing import Any

__all__ = ["iter_2dmd", "read_2dmd", "write_2dmd"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from . import twodmd

        return getattr(twodmd, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
