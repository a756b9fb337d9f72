"""Regenerate the shipped unit cells: relax each built-in host with the teacher.

Fixed c (20 Å of vacuum); the in-plane lattice (a, b, gamma) and positions are relaxed
to fmax 0.001 eV/Å and 0.01 GPa with FIRE and a masked FrechetCellFilter.

    python -m ase_definet.data.relax_hosts [--teacher chgnet]
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from ase.filters import FrechetCellFilter
from ase.io import write
from ase.optimize import FIRE

from ..core.hosts import BUILTIN_DEFECTS, guess_unit_cell

logger = logging.getLogger(__name__)


def relax_unit_cell(atoms, calc, fmax: float = 1e-3, steps: int = 2000):
    """Relax positions and the in-plane lattice of a 2D unit cell (c fixed). Returns a copy."""
    at = atoms.copy()
    at.calc = calc
    # voigt mask xx, yy, zz, yz, xz, xy: in-plane components only
    filt = FrechetCellFilter(at, mask=[1, 1, 0, 0, 0, 1])
    FIRE(filt, logfile=None).run(fmax=fmax, steps=steps)
    at.calc = None
    return at


def main(argv: list[str] | None = None) -> None:
    from .teacher import chgnet_calculator

    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--out", type=Path, default=Path(__file__).parent.parent / "core" / "hosts")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    calc = chgnet_calculator(stress=True)
    args.out.mkdir(parents=True, exist_ok=True)
    for name, d in BUILTIN_DEFECTS.items():
        at = relax_unit_cell(guess_unit_cell(name), calc)
        at.positions[:, 2] += at.cell[2, 2] / 2 - at.positions[:, 2].mean()
        write(args.out / d["cif"], at)
        a, b = at.cell.lengths()[:2]
        logger.info("%s: a=%.4f b=%.4f gamma=%.2f", name, a, b, at.cell.angles()[2])


if __name__ == "__main__":
    main()
