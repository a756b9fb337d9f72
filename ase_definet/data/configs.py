"""Seeded generators of defect configurations, as in 2DMD.

* High density: random substitutions and vacancies at 2.5, 5, 7.5, 10 and 12.5 % of the
  sites, the same number of configurations per concentration.
* Low density: 1 to 3 defects, distinct up to the host's symmetry.

Each sequence lives on one lattice axis (:mod:`.variants`): the shipped cell
(``original``), strained lattices, the PBE lattice or other supercell sizes; the lattice
of every configuration is drawn with its own seeded generator, so sequences stay
prefix-stable.

Every configuration gets a stable ``config_id``; the sequence for a given seed is
reproducible, and asking for more configurations extends it without changing the prefix.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field

import numpy as np
from ase.data import atomic_numbers

from ..core.defects import DefectSpec
from ..core.hosts import Host
from .symmetry import site_permutations
from .variants import AXES, Lattice, draw_strain, pbe_strain, supercell_sizes

HIGH_CONCENTRATIONS = (0.025, 0.05, 0.075, 0.10, 0.125)


@dataclass(frozen=True)
class DefectConfig:
    """One defect configuration of a host supercell."""

    config_id: str
    material: str
    density: str  # "high" or "low"
    concentration: float  # defects / sites
    spec: DefectSpec
    lattice: Lattice = field(default_factory=Lattice)  # axis, strain, supercell (.variants)


def _rng(seed: int, *keys: int | str) -> np.random.Generator:
    ints = [seed] + [k if isinstance(k, int) else zlib.crc32(k.encode()) for k in keys]
    return np.random.default_rng(ints)


def _random_spec(host: Host, numbers: np.ndarray, n_defects: int,
                 rng: np.random.Generator) -> DefectSpec:
    """Draw ``n_defects`` defects: a type uniformly among the allowed ones, then a free
    site of that element uniformly."""
    types = host.defect_types()
    used: set[int] = set()
    vac, subs = [], {}
    for _ in range(n_defects):
        free = []
        while not free:
            el, sub = types[rng.integers(len(types))]
            free = [i for i in np.flatnonzero(numbers == atomic_numbers[el]) if i not in used]
        site = int(free[rng.integers(len(free))])
        used.add(site)
        if sub is None:
            vac.append(site)
        else:
            subs[site] = sub
    return DefectSpec(vacancies=tuple(vac), substitutions=subs)


def draw_lattice(host: Host, axis: str, density: str, k: int, seed: int = 0,
                 max_strain: float = 0.04) -> Lattice:
    """The lattice of the ``k``-th configuration of an axis's sequence (seeded per
    configuration, so sequences are prefix-stable)."""
    default = tuple(host.supercell[:2])
    if axis == "original":
        return Lattice("original", (0.0, 0.0), default)
    if axis == "pbe":
        return Lattice("pbe", pbe_strain(host.name, host.unit_cell), default)
    rng = _rng(seed, host.name, axis, "lattice", density, k)
    if axis == "strain":
        return Lattice("strain", draw_strain(rng, k, max_strain), default)
    if axis == "size":
        sizes = supercell_sizes(default)
        return Lattice("size", (0.0, 0.0), sizes[rng.integers(len(sizes))])
    raise ValueError(f"unknown axis {axis!r}; known axes: {list(AXES)}")


def _id_prefix(host: Host, axis: str, density: str) -> str:
    return f"{host.name}-{density}" if axis == "original" else f"{host.name}-{axis}-{density}"


def high_density_configs(host: Host, n_per_concentration: int, seed: int = 0,
                         concentrations: tuple[float, ...] = HIGH_CONCENTRATIONS,
                         axis: str = "original", max_strain: float = 0.04
                         ) -> list[DefectConfig]:
    """Random high-density configurations, interleaved over concentrations.

    Configuration ``k * len(concentrations) + c`` is the ``k``-th one at concentration
    ``c``, so any prefix of the list is balanced across concentrations. On the
    ``original`` axis the sequence is the one of every earlier release.
    """
    out = []
    keys = (host.name,) if axis == "original" else (host.name, axis)
    for k in range(n_per_concentration):
        for ci, conc in enumerate(concentrations):
            lattice = draw_lattice(host, axis, "high", len(out), seed, max_strain)
            pristine = host.pristine((*lattice.repeat, 1))
            n_def = max(1, round(conc * len(pristine)))
            spec = _random_spec(host, pristine.numbers, n_def, _rng(seed, *keys, "high", ci, k))
            out.append(DefectConfig(f"{_id_prefix(host, axis, 'high')}-{len(out):05d}",
                                    host.name, "high", conc, spec, lattice))
    return out


def canonical_key(spec: DefectSpec, perms: np.ndarray) -> tuple:
    """Key identical for configurations related by a symmetry permutation."""
    sites = np.array([*spec.vacancies, *spec.substitutions], dtype=int)
    codes = np.array([0] * len(spec.vacancies) + list(spec.substitutions.values()))
    mapped = perms[:, sites]  # (n_ops, n_def)
    keys = [tuple(sorted(zip(row.tolist(), codes.tolist()))) for row in mapped]
    return min(keys)


def low_density_configs(host: Host, n: int, seed: int = 0, max_defects: int = 3,
                        max_tries: int = 100_000, axis: str = "original",
                        max_strain: float = 0.04) -> list[DefectConfig]:
    """``n`` configurations with 1 to ``max_defects`` defects, distinct up to symmetry.

    All symmetry-distinct single defects come first, then 2, 3, 2, 3, ... defects drawn
    at random (rejecting symmetry duplicates) until ``n`` are collected. Symmetry is that
    of the unstrained default supercell (``axis="size"`` is not offered here).
    """
    if axis == "size":
        raise ValueError("low-density configurations are planned on the default supercell; "
                         "the size axis is high density only")
    pristine = host.pristine()
    perms = site_permutations(pristine)
    numbers = pristine.numbers
    seen: set[tuple] = set()
    out: list[DefectConfig] = []
    prefix = _id_prefix(host, axis, "low")

    def add(spec: DefectSpec) -> None:
        key = canonical_key(spec, perms)
        if key not in seen:
            seen.add(key)
            lattice = draw_lattice(host, axis, "low", len(out), seed, max_strain)
            out.append(DefectConfig(f"{prefix}-{len(out):05d}", host.name, "low",
                                    spec.n_defects / len(pristine), spec, lattice))

    for el, sub in host.defect_types():
        for site in np.flatnonzero(numbers == atomic_numbers[el]):
            if len(out) >= n:
                break
            add(DefectSpec(vacancies=(int(site),)) if sub is None
                else DefectSpec(substitutions={int(site): sub}))
    rng = _rng(seed, host.name, "low") if axis == "original" else _rng(seed, host.name, axis,
                                                                       "low")
    sizes = list(range(2, max_defects + 1)) or [1]
    tries = 0
    while len(out) < n and tries < max_tries:
        add(_random_spec(host, numbers, sizes[tries % len(sizes)], rng))
        tries += 1
    if len(out) < n:
        raise ValueError(f"only {len(out)} distinct configurations found for {host.name}")
    return out[:n]


def embed(spec: DefectSpec, n_from: int, n_to: int, n_basis: int) -> DefectSpec:
    """Move the defect cluster of an n_from x n_from cell into an n_to x n_to cell (host
    order of ``Atoms.repeat``: site = (m0 * n + m1) * n_basis + b), keeping the defects'
    relative lattice positions (minimum image in the small cell)."""
    sites = [*spec.vacancies, *spec.substitutions]
    cells = np.array([divmod(s // n_basis, n_from) for s in sites])
    basis = [s % n_basis for s in sites]
    rel = (cells - cells[0] + n_from // 2) % n_from - n_from // 2  # minimum image
    new_cells = (rel + n_to // 2) % n_to
    new = {s: int((c[0] * n_to + c[1]) * n_basis + b)
           for s, c, b in zip(sites, new_cells, basis)}
    return DefectSpec(vacancies=tuple(new[s] for s in spec.vacancies),
                      substitutions={new[s]: z for s, z in spec.substitutions.items()})
