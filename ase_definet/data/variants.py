"""Axes of variety for generated pairs: host lattice and supercell size.

Every configuration lives on one *axis*:

* ``original``: the host's shipped (teacher-relaxed) unit cell and default supercell;
* ``strain``: the shipped unit cell strained in-plane, biaxially or along one Cartesian
  in-plane axis (x, then y: phosphorene's zigzag and armchair axes differ), by a seeded
  amount drawn uniformly in ``[-max_strain, +max_strain]``;
* ``pbe``: the 2DMD (PBE) lattice constants of the paper's Table 1 (cell size divided
  by the supercell), a named lattice variant;
* ``size``: the shipped lattice in another supercell, 5x5 to 10x10, rectangular
  repetitions too (the default supercell itself excluded).

The pristine host of a strained lattice is the teacher's fixed-cell relaxation of the
strained unit cell, repeated (:func:`relaxed_unit_cell`), so only the defects perturb it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from ase import Atoms

AXES = ("original", "strain", "pbe", "size")
STRAIN_MODES = ("biaxial", "x", "y")
SIZE_RANGE = (5, 10)  # inclusive, repetitions along each in-plane cell vector

#: 2DMD supercell sizes (Å) of the paper's Table 1 over their repetitions: the PBE
#: in-plane lattice constants (a, b) of the unit cells.
PBE_LATTICE: dict[str, tuple[float, float]] = {
    "MoS2": (25.52 / 8, 25.52 / 8),
    "WSe2": (26.62 / 8, 26.62 / 8),
    "hBN": (20.10 / 8, 20.10 / 8),
    "GaSe": (22.91 / 6, 22.91 / 6),
    "InSe": (24.58 / 6, 24.58 / 6),
    "BP": (19.80 / 6, 27.61 / 6),
}


@dataclass(frozen=True)
class Lattice:
    """The lattice and supercell of one configuration.

    Attributes:
        axis: one of :data:`AXES`.
        strain: (e_xx, e_yy), dimensionless in-plane strain of the unit cell's
            Cartesian x and y relative to the shipped cell (0.02 = +2 %).
        repeat: (nx, ny) repetitions of the unit cell.
    """

    axis: str = "original"
    strain: tuple[float, float] = (0.0, 0.0)
    repeat: tuple[int, int] = (1, 1)

    @property
    def strained(self) -> bool:
        return self.strain != (0.0, 0.0)

    def info(self, unit_cell: Atoms) -> dict[str, float | str]:
        """What every pair records of its lattice: axis, strain, a, b (Å), supercell."""
        a, b = self.strained_cell(unit_cell).lengths()[:2]
        return dict(axis=self.axis, strain_xx=float(self.strain[0]),
                    strain_yy=float(self.strain[1]), lattice_a=float(a), lattice_b=float(b),
                    supercell=f"{self.repeat[0]}x{self.repeat[1]}")

    def strained_cell(self, unit_cell: Atoms):
        """The unit cell's cell (3, 3) Å after the strain."""
        deform = np.diag([1.0 + self.strain[0], 1.0 + self.strain[1], 1.0])
        return unit_cell.cell.new(unit_cell.cell[:] @ deform)


def draw_strain(rng: np.random.Generator, k: int, max_strain: float) -> tuple[float, float]:
    """The ``k``-th strain of a sequence: modes cycle biaxial, x, y; the magnitude is
    uniform in [-max_strain, max_strain], rounded to 1e-4 (never exactly zero)."""
    e = float(np.round(rng.uniform(-max_strain, max_strain), 4)) or 1e-4
    mode = STRAIN_MODES[k % len(STRAIN_MODES)]
    return {"biaxial": (e, e), "x": (e, 0.0), "y": (0.0, e)}[mode]


def pbe_strain(material: str, unit_cell: Atoms) -> tuple[float, float]:
    """Strain that takes the shipped unit cell to the 2DMD (PBE) lattice."""
    try:
        a, b = PBE_LATTICE[material]
    except KeyError:
        raise ValueError(f"no PBE lattice for {material!r}; known: {sorted(PBE_LATTICE)}"
                         ) from None
    a0, b0 = unit_cell.cell.lengths()[:2]
    return float(np.round(a / a0 - 1.0, 6)), float(np.round(b / b0 - 1.0, 6))


def supercell_sizes(default: tuple[int, int], square_only: bool = False
                    ) -> list[tuple[int, int]]:
    """All (nx, ny) in :data:`SIZE_RANGE` but ``default``: squares, then rectangles with
    |nx - ny| <= 2 (enough variety of shape, no needle-like cells)."""
    lo, hi = SIZE_RANGE
    sizes = [(n, n) for n in range(lo, hi + 1)]
    if not square_only:
        sizes += [(nx, ny) for nx in range(lo, hi + 1) for ny in range(lo, hi + 1)
                  if nx != ny and abs(nx - ny) <= 2]
    return [s for s in sizes if s != tuple(default)]


def strained_unit_cell(unit_cell: Atoms, strain: tuple[float, float]) -> Atoms:
    """A copy of ``unit_cell`` with the in-plane strain applied, atoms scaled along."""
    at = unit_cell.copy()
    at.set_cell(Lattice(strain=strain).strained_cell(unit_cell), scale_atoms=True)
    return at


def relaxed_unit_cell(unit_cell: Atoms, strain: tuple[float, float], calc,
                      fmax: float = 1e-3, steps: int = 2000) -> Atoms:
    """The teacher's fixed-cell relaxation of the strained unit cell (positions only,
    to ``fmax`` eV/Å, FIRE). ``unit_cell`` is not modified."""
    from ase.optimize import FIRE

    at = strained_unit_cell(unit_cell, strain)
    at.calc = calc
    if not FIRE(at, logfile=None).run(fmax=fmax, steps=steps):
        raise RuntimeError(f"strained unit cell did not relax to {fmax} eV/Å in {steps} steps")
    at.calc = None
    return at
