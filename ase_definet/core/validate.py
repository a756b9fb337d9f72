"""Checks of what users hand in: finite numbers, physical distances, sane checkpoint
configurations, writable outputs. Each raises ``ValueError`` naming the problem and
never modifies its input."""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ..graph.neighbors import neighbor_graph

MIN_DISTANCE = 0.5  # Å: atoms closer than this are an input error (H2 bonds: 0.74 Å)

# bounds of a checkpoint's configuration (the paper: F=512, T=4, D=6 Å, N=50, 32 RBFs);
# a file beyond them is refused before anything is built or allocated
CONFIG_BOUNDS: dict[str, tuple[float, float]] = {
    "hidden": (1, 4096), "layers": (1, 32), "n_rbf": (1, 1024), "cutoff": (0.5, 15.0),
    "max_neighbors": (1, 1000), "edge_chunk": (1, 10**7), "refine": (0, 16),
}


def check_finite(values: Any, what: str, unit: str = "atom") -> None:
    """``ValueError`` if ``values`` (n, ...) holds NaN or inf; names the first bad row."""
    arr = np.asarray(values, dtype=float)
    bad = ~np.isfinite(arr)
    if bad.any():
        rows = np.flatnonzero(bad.reshape(len(arr), -1).any(axis=1)) if arr.ndim else [0]
        raise ValueError(f"non-finite {what} (NaN or inf) at {unit} {int(rows[0])}"
                         + (f" and {len(rows) - 1} more" if len(rows) > 1 else ""))


def check_atoms(atoms, what: str = "atoms") -> None:
    """Finite positions (n, 3) Å and cell (3, 3) Å of an ``ase.Atoms``."""
    check_finite(atoms.cell[:], f"cell of the {what}", unit="lattice vector")
    check_finite(atoms.positions, f"position in the {what}")


def check_min_distance(positions: np.ndarray, cell: np.ndarray, pbc: np.ndarray,
                       what: str = "structure", min_distance: float = MIN_DISTANCE) -> None:
    """``ValueError`` if two atoms (or an atom and a periodic image) are closer than
    ``min_distance`` Å: such a cell is no physical input, and its neighbour list would
    grow without bound. Cost: one neighbour list of cutoff ``min_distance``."""
    positions = np.asarray(positions, dtype=float)
    edge_index, shifts = neighbor_graph(positions, cell, pbc, min_distance)
    if edge_index.shape[1] == 0:
        return
    j, i = edge_index
    d = np.linalg.norm(positions[j] + shifts - positions[i], axis=1)
    k = int(d.argmin())
    a, b = sorted((int(i[k]), int(j[k])))
    pair = f"atom {a} and a periodic image of itself" if a == b else f"atoms {a} and {b}"
    raise ValueError(f"{pair} of the {what} are {d[k]:.2f} Å apart, closer than the "
                     f"physical minimum of {min_distance} Å (MIN_DISTANCE)")


def check_prediction(positions: np.ndarray, k: int) -> None:
    """Predicted site coordinates (n_sites, 3) Å of structure ``k`` must be finite."""
    bad = ~np.isfinite(positions)
    if bad.any():
        site_bad = bad.any(axis=-1)  # (n_sites,) or (n_layers, n_sites)
        n = int((site_bad.any(axis=0) if site_bad.ndim > 1 else site_bad).sum())
        raise ValueError(f"the model predicted non-finite coordinates for structure {k} "
                         f"({n} site(s)): the weights are broken or the input is out of "
                         "their range")


def check_config(d: Any) -> None:
    """A checkpoint's DefiNet configuration (a dict) within :data:`CONFIG_BOUNDS`, with
    valid elements, before anything is built from it."""
    if not isinstance(d, Mapping):
        raise ValueError(f"the configuration must be a JSON object, got {type(d).__name__}")
    for key, (lo, hi) in CONFIG_BOUNDS.items():
        if key not in d or (key == "max_neighbors" and d[key] is None):
            continue
        v = d[key]
        integral = key != "cutoff"
        ok = (isinstance(v, numbers.Real) and not isinstance(v, bool)
              and (isinstance(v, numbers.Integral) or not integral)
              and math.isfinite(v) and lo <= v <= hi)
        if not ok:
            kind = "an integer" if integral else "a number"
            raise ValueError(f"configuration {key}={v!r} is out of range: expected {kind} "
                             f"from {lo} to {hi}")
    for key in ("tau", "displacement_init"):
        v = d.get(key, 0.0)
        if not (isinstance(v, numbers.Real) and math.isfinite(v) and v >= 0):
            raise ValueError(f"configuration {key}={v!r} must be a finite number >= 0")
    if not isinstance(d.get("axial_global", False), bool):
        raise ValueError(f"configuration axial_global={d['axial_global']!r} must be a boolean")
    el = d.get("elements", [1])
    if (not isinstance(el, list) or not el
            or not all(isinstance(z, int) and not isinstance(z, bool) and 1 <= z <= 118
                       for z in el) or len(set(el)) != len(el)):
        raise ValueError(f"configuration elements={el!r} must be a list of distinct atomic "
                         "numbers from 1 to 118")


def check_output(path: str | Path, fmt: str | None) -> None:
    """An output file for ``ase.io.write``: not a folder, in an existing folder, of a
    known writable format (``fmt`` or guessed from the name)."""
    from ase.io.formats import filetype, ioformats

    path = Path(path)
    if path.is_dir():
        raise ValueError(f"output {str(path)!r} is a directory; give a file name")
    if not path.parent.is_dir():
        raise ValueError(f"the folder of output {str(path)!r} does not exist")
    writable = sorted(name for name, f in ioformats.items() if f.can_write)
    if fmt is not None:
        if fmt not in writable:
            raise ValueError(f"unknown output format {fmt!r}; ase.io writes "
                             f"{', '.join(writable)}")
        return
    try:
        guessed = filetype(str(path), read=False)
    except Exception:  # noqa: BLE001  ase raises several types for unknown names
        guessed = None
    if guessed not in writable:
        raise ValueError(f"cannot tell the output format from the name {path.name!r}; "
                         "give --format (e.g. extxyz, cif, vasp)")
