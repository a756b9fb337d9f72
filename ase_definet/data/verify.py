"""Check a data set's labels: recompute the teacher's forces at stored relaxed positions.

A converged pair's relaxed structure is a minimum of its teacher, so the teacher's
largest atomic force there must be close to the relaxation criterion (0.01 eV/Å).
Drawing pairs at random and recomputing with another calculator (for CHGNet, its own
stock ASE calculator, teacher ``chgnet-stock``, not the patched labelling one) checks
that positions, species and cell were stored as relaxed::

    definet summary data --verify 24            # 24 random converged pairs, CHGNet
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from ase.calculators.calculator import Calculator
from ase.db import connect
from tqdm.auto import tqdm

logger = logging.getLogger(__name__)


@dataclass
class ForceCheck:
    """One checked pair: where it is and the teacher's largest force there (eV/Å)."""

    path: str
    row_id: int
    material: str
    density: str
    n_atoms: int
    max_force: float


def draw_pairs(paths: list[Path], n: int, seed: int = 0) -> list[tuple[Path, int]]:
    """``n`` converged pairs drawn uniformly without replacement: (file, row id)."""
    pool = []
    for p in paths:
        with connect(p) as db:
            pool += [(p, row.id) for row in db.select(converged=True, columns=["id"])]
    if not pool:
        raise ValueError(f"no converged pairs in {[str(p) for p in paths]}")
    rng = np.random.default_rng(seed)
    pick = rng.choice(len(pool), size=min(n, len(pool)), replace=False)
    return [pool[i] for i in sorted(pick)]


def relaxed_forces(paths: list[Path], n: int, calc: Calculator, seed: int = 0
                   ) -> list[ForceCheck]:
    """The calculator's largest atomic force at the relaxed positions of ``n`` random
    converged pairs of ``paths`` (the row's own Atoms with ``relaxed_positions``)."""
    out = []
    for path, row_id in tqdm(draw_pairs(paths, n, seed), desc="verify", unit="pair",
                             disable=None):
        with connect(path) as db:
            row = db.get(id=row_id)
        atoms = row.toatoms()
        atoms.positions = row.data["relaxed_positions"]
        atoms.calc = calc
        f = float(np.linalg.norm(atoms.get_forces(), axis=1).max())
        out.append(ForceCheck(str(path), row_id, row.material, row.density, len(atoms), f))
        logger.info("%s id %d (%s %s): max force %.4f eV/Å", path, row_id, row.material,
                    row.density, f)
    return out


def format_checks(checks: list[ForceCheck], limit: float) -> str:
    """A text table of the checks and a verdict line against ``limit`` (eV/Å)."""
    lines = [f"{'file':<28}{'id':>4}  {'material':<9}{'density':<8}{'atoms':>6}"
             f"{'max |F| eV/Å':>14}"]
    for c in checks:
        lines.append(f"{Path(c.path).name:<28}{c.row_id:>4}  {c.material:<9}{c.density:<8}"
                     f"{c.n_atoms:>6}{c.max_force:>14.4f}")
    worst = max(c.max_force for c in checks)
    verdict = "OK" if worst < limit else "FAILED"
    lines.append(f"{verdict}: largest force {worst:.4f} eV/Å over {len(checks)} pairs "
                 f"(limit {limit} eV/Å)")
    return "\n".join(lines)
