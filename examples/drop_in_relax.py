"""Drop-in: DefiNetRelaxer where an ASE optimizer line used to be.

    python examples/drop_in_relax.py [--model default] [--size 8]

Before:  BFGS(atoms).run(fmax=0.05)
After:   DefiNetRelaxer(atoms, pristine=host).run()
"""

from __future__ import annotations

import argparse

import numpy as np

from ase_definet import DefectSpec, DefiNetRelaxer
from ase_definet.core.hosts import get_host


def main(argv: list[str] | None = None) -> np.ndarray:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--model", default="default")
    p.add_argument("--size", type=int, default=8, help="n x n MoS2 supercell")
    args = p.parse_args(argv)

    host = get_host("MoS2").pristine((args.size, args.size, 1))
    atoms = DefectSpec(vacancies=(1,), substitutions={3: "W"}).apply(host)  # your structure
    start = atoms.positions.copy()

    # BFGS(atoms, trajectory="relax.traj").run(fmax=0.05)            <- before
    DefiNetRelaxer(atoms, pristine=host, model=args.model).run()      # <- after

    moved = np.linalg.norm(atoms.positions - start, axis=1)
    print(f"relaxed {len(atoms)} atoms in place; largest displacement {moved.max():.3f} Å")
    return moved


if __name__ == "__main__":
    main()
