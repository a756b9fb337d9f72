"""The range of structures a checkpoint was trained on, and checks against it.

A checkpoint's :class:`Domain` records, from its training pairs:

* per element pair ("Mo-S", symbols sorted), the range of the hosts' median
  nearest-neighbour distance (Å): a strained or other lattice moves it;
* per ordered element pair ("Mo>S": S around Mo), the range of the median distance to
  the k-th nearest neighbour, k = 2..12 within 6 Å (the *shells*): a lattice that keeps
  its bonds but changes its angles (phosphorene stretched along armchair) moves these;
* the defect kinds seen: substitutions "S>Se" (host element > substituent) and
  vacancies "V_S".

:meth:`Domain.reasons` lists, for a structure to relax, every reason it lies outside:
an element pair never seen (a host of other chemistry, e.g. WS2), a lattice outside the
trained distances (beyond 1 % for the nearest neighbours, 2 % for the shells), a defect
kind never seen (e.g. an antisite).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from ase import Atoms
from ase.data import chemical_symbols

METADATA_KEY = "domain"
NEIGHBOUR_CUTOFF = 4.5  # Å, within which nearest neighbours of each element are sought
MARGIN = 0.01  # relative tolerance on the trained nearest-neighbour distance ranges
SHELLS = 12  # neighbours per ordered element pair in the shells
SHELL_CUTOFF = 6.0  # Å
SHELL_MARGIN = 0.02  # relative tolerance on the trained shell ranges


@dataclass(frozen=True)
class HostGeometry:
    """What the domain checks of a host's lattice (see the module docstring).

    Attributes:
        distances: "A-B" -> median nearest-neighbour distance, Å.
        shells: "A>B" -> [d_1, ..., d_K], Å.
    """

    distances: dict[str, float]
    shells: dict[str, list[float]]


def host_geometry(host: Atoms, cached: bool = True) -> HostGeometry:
    """The nearest-neighbour distances and shells of ``host``, from one neighbour list.
    Cached per host geometry (the last 16) unless ``cached`` is False; the caller gets
    its own copy."""
    if not cached:
        return _host_geometry(host)
    key = (host.numbers.tobytes(), np.round(host.positions, 6).tobytes(),
           np.round(host.cell[:], 6).tobytes(), tuple(host.pbc))
    if key not in _GEOMETRY_CACHE:
        if len(_GEOMETRY_CACHE) >= 16:
            _GEOMETRY_CACHE.pop(next(iter(_GEOMETRY_CACHE)))
        _GEOMETRY_CACHE[key] = _host_geometry(host)
    geo = _GEOMETRY_CACHE[key]
    return HostGeometry(dict(geo.distances), {k: list(v) for k, v in geo.shells.items()})


_GEOMETRY_CACHE: dict[tuple, HostGeometry] = {}


def host_distances(host: Atoms) -> dict[str, float]:
    """Median nearest-neighbour distance (Å) per element pair of a host: "A-B"
    (symbols sorted) is the median, over A atoms and B atoms, of the distance to the
    nearest atom of the other element (within ``NEIGHBOUR_CUTOFF``; pairs with no
    neighbour within it are absent)."""
    return host_geometry(host).distances


def host_shells(host: Atoms, cached: bool = True) -> dict[str, list[float]]:
    """Neighbour shells of a host: "A>B" -> [d_1, ..., d_K] Å, d_k the median over A atoms
    of the distance to their k-th nearest B atom (within ``SHELL_CUTOFF``; K at most
    ``SHELLS`` and at most the fewest B neighbours an A atom has)."""
    return host_geometry(host, cached).shells


def _host_geometry(host: Atoms) -> HostGeometry:
    from matscipy.neighbours import neighbour_list

    at = host.copy()
    at.calc = None
    if not at.pbc.all():  # a zero non-periodic cell vector: any length will do
        at.cell = at.cell.complete() if at.cell.rank < 3 else at.cell
    i, j, d = neighbour_list("ijd", at, max(NEIGHBOUR_CUTOFF, SHELL_CUTOFF))
    z = at.numbers
    return HostGeometry(_nearest(i, j, d, z), _shells(i, j, d, z))


def _nearest(i: np.ndarray, j: np.ndarray, d: np.ndarray, z: np.ndarray) -> dict[str, float]:
    """Median nearest-neighbour distance per element pair, from a neighbour list
    (pairs i-j at distance d, Å; z the atomic numbers)."""
    keep = d <= NEIGHBOUR_CUTOFF
    i, j, d = i[keep], j[keep], d[keep]
    nearest: dict[tuple[int, int], np.ndarray] = {}
    for zi in np.unique(z):
        for zj in np.unique(z):
            sel = (z[i] == zi) & (z[j] == zj)
            if sel.any():
                best = np.full(len(z), np.inf)
                np.minimum.at(best, i[sel], d[sel])
                nearest[(zi, zj)] = best[(z == zi) & np.isfinite(best)]
    out: dict[str, float] = {}
    for (zi, zj), vals in nearest.items():
        a, b = sorted((chemical_symbols[zi], chemical_symbols[zj]))
        both = np.concatenate([vals, nearest.get((zj, zi), np.zeros(0))]) if zi != zj else vals
        out[f"{a}-{b}"] = float(np.median(both))
    return out


def _shells(i: np.ndarray, j: np.ndarray, d: np.ndarray, z: np.ndarray) -> dict[str, list[float]]:
    """Median k-th neighbour distance per ordered element pair, k = 1..SHELLS, from a
    neighbour list (pairs i-j at distance d, Å; z the atomic numbers)."""
    keep = d <= SHELL_CUTOFF
    i, j, d = i[keep], j[keep], d[keep]
    out: dict[str, list[float]] = {}
    for zi in np.unique(z):
        n_i = int((z == zi).sum())
        for zj in np.unique(z):
            sel = (z[i] == zi) & (z[j] == zj)
            ii, dd = i[sel], d[sel]
            order = np.lexsort((dd, ii))
            ii, dd = ii[order], dd[order]
            starts = np.flatnonzero(np.r_[True, ii[1:] != ii[:-1]]) if len(ii) else ii
            if len(starts) < n_i:  # some A atom has no B neighbour within the cutoff
                continue
            counts = np.diff(np.r_[starts, len(ii)])
            rank = np.arange(len(ii)) - np.repeat(starts, counts)
            k_max = min(SHELLS, int(counts.min()))
            out[f"{chemical_symbols[zi]}>{chemical_symbols[zj]}"] = [
                float(np.median(dd[rank == k])) for k in range(k_max)]
    return out


def defect_kinds(pristine_numbers: np.ndarray, vacancies: Iterable[int],
                 substitutions: Mapping[int, int]) -> set[str]:
    """The kinds of the defects: "S>Se" for Se on an S site, "V_S" for an S vacancy."""
    sym = chemical_symbols
    kinds = {f"V_{sym[pristine_numbers[v]]}" for v in vacancies}
    kinds |= {f"{sym[pristine_numbers[s]]}>{sym[z]}" for s, z in substitutions.items()}
    return kinds


@dataclass
class Domain:
    """What a checkpoint was trained on (see the module docstring).

    Attributes:
        distances: "A-B" -> (smallest, largest) median nearest-neighbour distance, Å.
        defect_kinds: the defect kinds seen.
        margin: relative tolerance of the nearest-neighbour check.
        shells: "A>B" -> per k = 1..K, (smallest, largest) median k-th neighbour
            distance, Å (empty in domains recorded before the shells: not checked).
        shell_margin: relative tolerance of the shell check.
    """

    distances: dict[str, tuple[float, float]] = field(default_factory=dict)
    defect_kinds: set[str] = field(default_factory=set)
    margin: float = MARGIN
    shells: dict[str, list[tuple[float, float]]] = field(default_factory=dict)
    shell_margin: float = SHELL_MARGIN

    def add_host(self, host: Atoms) -> None:
        geo = host_geometry(host)
        for key, d in geo.distances.items():
            lo, hi = self.distances.get(key, (d, d))
            self.distances[key] = (min(lo, d), max(hi, d))
        for key, ds in geo.shells.items():
            old = self.shells.get(key, [(d, d) for d in ds])
            self.shells[key] = [(min(lo, d), max(hi, d)) for (lo, hi), d in zip(old, ds)]

    def to_dict(self) -> dict[str, Any]:
        return {"distances": {k: list(v) for k, v in sorted(self.distances.items())},
                "defect_kinds": sorted(self.defect_kinds), "margin": self.margin,
                "shells": {k: [list(r) for r in v] for k, v in sorted(self.shells.items())},
                "shell_margin": self.shell_margin}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Domain:
        try:
            dist = {str(k): (float(v[0]), float(v[1])) for k, v in d["distances"].items()}
            shells = {str(k): [(float(r[0]), float(r[1])) for r in v]
                      for k, v in d.get("shells", {}).items()}
            return cls(dist, {str(k) for k in d["defect_kinds"]},
                       float(d.get("margin", MARGIN)), shells,
                       float(d.get("shell_margin", SHELL_MARGIN)))
        except (KeyError, TypeError, ValueError, IndexError) as err:
            raise ValueError(f"bad training domain in the checkpoint: {err}") from None

    def reasons(self, host: Atoms, kinds: Iterable[str]) -> list[str]:
        """Why a structure on ``host`` with defects ``kinds`` lies outside (empty: it
        does not)."""
        geo = host_geometry(host)
        unseen, outside = [], []
        for key, d in sorted(geo.distances.items()):
            if key not in self.distances:
                unseen.append(key)
                continue
            lo, hi = self.distances[key]
            if not lo * (1 - self.margin) <= d <= hi * (1 + self.margin):
                outside.append(f"{key} {d:.3f} Å (trained {lo:.3f}-{hi:.3f})")
        out = []
        if unseen:
            out.append(f"element pair(s) {', '.join(unseen)} never seen in training (a "
                       "host of another chemistry?)")
        if outside:
            out.append("nearest-neighbour distances outside the trained range, a strained "
                       f"or other lattice?: {'; '.join(outside)}")
        shells = self._shells_outside(geo.shells) if self.shells and not unseen else []
        if shells:
            out.append("neighbour shells outside the trained range, a strained or other "
                       f"lattice?: {'; '.join(shells)}")
        new = sorted(set(kinds) - self.defect_kinds)
        if new:
            out.append(f"defect kind(s) {', '.join(new)} never seen in training")
        return out

    def _shells_outside(self, shells: Mapping[str, list[float]]) -> list[str]:
        """The worst shell of each ordered pair outside the trained range (k >= 2)."""
        out = []
        for key, ds in sorted(shells.items()):
            ranges = self.shells.get(key, [])
            worst, where = 0.0, None
            for k, (d, (lo, hi)) in enumerate(zip(ds, ranges), start=1):
                excess = max(lo * (1 - self.shell_margin) - d, d - hi * (1 + self.shell_margin))
                if k > 1 and excess > worst:
                    worst, where = excess, (k, d, lo, hi)
            if where:
                k, d, lo, hi = where
                out.append(f"{key} neighbour {k} at {d:.3f} Å (trained {lo:.3f}-{hi:.3f})")
        return out
