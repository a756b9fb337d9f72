"""The range of structures a checkpoint was trained on, and checks against it.

A checkpoint's :class:`Domain` records, from its training pairs:

* per element pair ("Mo-S", symbols sorted), the range of the hosts' median
  nearest-neighbour distance (Å): a strained or other lattice moves it;
* the defect kinds seen: substitutions "S>Se" (host element > substituent) and
  vacancies "V_S".

:func:`out_of_domain` lists, for a structure to relax, every reason it lies outside:
an element pair never seen (a host of other chemistry, e.g. WS2), a lattice outside the
trained distances (beyond ``margin``), a defect kind never seen (e.g. an antisite).
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
MARGIN = 0.01  # relative tolerance on the trained distance ranges


def host_distances(host: Atoms, cutoff: float = NEIGHBOUR_CUTOFF) -> dict[str, float]:
    """Median nearest-neighbour distance (Å) per element pair of a host: "A-B"
    (symbols sorted) is the median, over A atoms and B atoms, of the distance to the
    nearest atom of the other element (within ``cutoff``; pairs with no neighbour
    within it are absent)."""
    from matscipy.neighbours import neighbour_list

    at = host.copy()
    at.calc = None
    if not at.pbc.all():  # a zero non-periodic cell vector: any length will do
        cell = at.cell.complete() if at.cell.rank < 3 else at.cell
        at.cell = cell
    i, j, d = neighbour_list("ijd", at, cutoff)
    z = at.numbers
    nearest: dict[tuple[int, int], np.ndarray] = {}
    for zi in np.unique(z):
        for zj in np.unique(z):
            sel = (z[i] == zi) & (z[j] == zj)
            if sel.any():
                best = np.full(len(at), np.inf)
                np.minimum.at(best, i[sel], d[sel])
                nearest[(zi, zj)] = best[(z == zi) & np.isfinite(best)]
    out: dict[str, float] = {}
    for (zi, zj), vals in nearest.items():
        a, b = sorted((chemical_symbols[zi], chemical_symbols[zj]))
        both = np.concatenate([vals, nearest.get((zj, zi), np.zeros(0))]) if zi != zj else vals
        out[f"{a}-{b}"] = float(np.median(both))
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
        margin: relative tolerance of the distance check.
    """

    distances: dict[str, tuple[float, float]] = field(default_factory=dict)
    defect_kinds: set[str] = field(default_factory=set)
    margin: float = MARGIN

    def add_host(self, host: Atoms) -> None:
        for key, d in host_distances(host).items():
            lo, hi = self.distances.get(key, (d, d))
            self.distances[key] = (min(lo, d), max(hi, d))

    def to_dict(self) -> dict[str, Any]:
        return {"distances": {k: list(v) for k, v in sorted(self.distances.items())},
                "defect_kinds": sorted(self.defect_kinds), "margin": self.margin}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Domain:
        try:
            dist = {str(k): (float(v[0]), float(v[1])) for k, v in d["distances"].items()}
            return cls(dist, {str(k) for k in d["defect_kinds"]},
                       float(d.get("margin", MARGIN)))
        except (KeyError, TypeError, ValueError, IndexError) as err:
            raise ValueError(f"bad training domain in the checkpoint: {err}") from None

    def reasons(self, host: Atoms, kinds: Iterable[str]) -> list[str]:
        """Why a structure on ``host`` with defects ``kinds`` lies outside (empty: it
        does not)."""
        unseen, outside = [], []
        for key, d in sorted(host_distances(host).items()):
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
        new = sorted(set(kinds) - self.defect_kinds)
        if new:
            out.append(f"defect kind(s) {', '.join(new)} never seen in training")
        return out
