"""The paper's metrics: coordinate MAE over atoms, and over atoms within 3-6 Å of any
defect site (A3-A6, periodic distances), for a model and for the Dummy baseline."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
from ase.geometry import find_mic

RADII = (3.0, 4.0, 5.0, 6.0)


def distance_to_defects(positions: np.ndarray, cell: np.ndarray, defect_sites: np.ndarray
                        ) -> np.ndarray:
    """Minimum-image distance (Å) of every site to the nearest defect site, shape (n,);
    ``inf`` when there is no defect. Assumes a periodic cell in every direction."""
    out = np.full(len(positions), np.inf)
    for d in defect_sites:
        _, dist = find_mic(positions - positions[d], cell, pbc=True)
        out = np.minimum(out, dist)
    return out


@dataclass
class ErrorAccumulator:
    """Running sums of per-atom errors by group and region (``all``, ``A3``..``A6``)."""

    sums: dict = field(default_factory=lambda: defaultdict(float))
    counts: dict = field(default_factory=lambda: defaultdict(int))
    structures: dict = field(default_factory=lambda: defaultdict(int))  # group -> count
    worse: dict = field(default_factory=lambda: defaultdict(int))  # ... predicted worse
    worse_structures: list = field(default_factory=list)  # (name, MAE, Dummy MAE) Å

    def add_structure(self, groups: Iterable[str], mae: float, dummy_mae: float,
                      name: str = "") -> None:
        """Count a structure, and whether its prediction is worse (higher MAE, Å) than its
        unrelaxed input, in each of ``groups``; a worse one is listed by ``name``."""
        worse = mae > dummy_mae
        for g in groups:
            self.structures[g] += 1
            self.worse[g] += int(worse)
        if worse:
            self.worse_structures.append((name, mae, dummy_mae))

    def add(self, groups: Iterable[str], errors: np.ndarray, near: np.ndarray,
            prefix: str = "") -> None:
        """``errors`` (n_atoms,) Å; ``near`` (n_atoms,) distance to the nearest defect."""
        regions = {"all": np.ones(len(errors), dtype=bool)}
        regions |= {f"A{int(r)}": near <= r for r in RADII}
        for g in groups:
            for name, sel in regions.items():
                self.sums[(g, prefix + name)] += float(errors[sel].sum())
                self.counts[(g, prefix + name)] += int(sel.sum())

    def mae(self, group: str = "overall", region: str = "all") -> float:
        n = self.counts.get((group, region), 0)
        return self.sums[(group, region)] / n if n else float("nan")

    def groups(self) -> list[str]:
        return sorted({g for g, _ in self.counts}, key=lambda g: (g != "overall", g))

    def rows(self, regions: Iterable[str]) -> list[dict]:
        rows = []
        for g in self.groups():
            row = {"group": g}
            for r in regions:
                row[r] = self.mae(g, r)
            rows.append(row)
        return rows


def sample_groups(info: dict) -> list[str]:
    """Groups a pair counts in: overall, per material, per material/density, per density,
    and, for pairs that record their lattice axis, per axis and material/axis."""
    mat, dens, axis = info.get("material"), info.get("density"), info.get("axis")
    out = ["overall"]
    if mat:
        out.append(str(mat))
        if dens:
            out.append(f"{mat}/{dens}")
        if axis:
            out.append(f"{mat}/axis={axis}")
    if dens:
        out.append(f"density={dens}")
    if axis:  # pairs of the generator's lattice axes (original, strain, pbe, size)
        out.append(f"axis={axis}")
    return out
