"""How low can an equivariant model go? The symmetry floor of the coordinate MAE.

    python benchmarks/symmetry_floor.py [--model default] [--data data] [--split test]

An exactly equivariant model given a defective structure with point symmetry must
predict displacements with that symmetry. When the teacher's relaxation breaks it
(FIRE from an exactly symmetric saddle, tipped by round-off), no such model can
reproduce the label. The best it can do is the label averaged over the symmetry
operations of the unrelaxed defect structure (vacancy and substitution sites kept
apart from host sites). Printed per material and overall, with A3: the Dummy MAE,
the MAE of that symmetrised label (the floor), floor / Dummy, the model's MAE / Dummy,
and the model's distance from the symmetrised label (what it could still gain), Å.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
from ase import Atoms

from ase_definet.data.symmetry import symmetrize_vectors, symmetry_operations
from ase_definet.train.dataset import Sample
from ase_definet.train.evaluate import evaluate_split_from_cli


def symmetric_label(sample: Sample, symprec: float = 1e-3) -> tuple[np.ndarray, int]:
    """The relaxed positions of ``sample`` averaged over the symmetry of its unrelaxed
    defect structure, (n_sites, 3) Å, and the number of operations."""
    g = sample.graph
    types = g.numbers * 3 + g.markers  # a vacancy or substitution is its own kind
    atoms = Atoms(numbers=np.ones(len(types), dtype=int), positions=g.positions,
                  cell=g.cell, pbc=True)
    rotations, perms = symmetry_operations(atoms, symprec, types=types)
    disp = np.where(sample.mask[:, None], sample.target - g.positions, 0.0)
    return g.positions + symmetrize_vectors(disp, rotations, perms), len(perms)


def main(argv: list[str] | None = None) -> list[dict]:
    args, _model, dataset, arrays = evaluate_split_from_cli(__doc__, argv, split="test")
    sums: dict[tuple[str, str], np.ndarray] = defaultdict(lambda: np.zeros(4))
    start = 0
    n_ops = []
    for s in dataset.samples:
        m = s.mask
        n = int(m.sum())
        pred = arrays["pred"][start:start + n] + s.graph.positions[m]
        start += n
        sym, k = symmetric_label(s)
        n_ops.append(k)
        cols = np.stack([np.linalg.norm(s.target[m] - s.graph.positions[m], axis=1),
                         np.linalg.norm(sym[m] - s.target[m], axis=1),
                         np.linalg.norm(pred - s.target[m], axis=1),
                         np.linalg.norm(pred - sym[m], axis=1)], axis=1)
        near = s.near_defect()[m] <= 3.0
        for group in ("overall", str(s.info.get("material"))):
            sums[(group, "all")] += cols.sum(0)
            sums[(group, "A3")] += cols[near].sum(0)
            sums[(group, "n_all")] += n
            sums[(group, "n_A3")] += int(near.sum())
    print(f"model {args.model}; {len(dataset)} {args.split} pairs; symmetry operations "
          f"per structure: median {int(np.median(n_ops))}, "
          f"{np.mean(np.array(n_ops) > 1):.0%} of structures have more than the identity")
    print(f"{'group':<10}{'region':<7}{'Dummy Å':>9}{'floor Å':>9}{'floor/D':>9}"
          f"{'model/D':>9}{'model-sym Å':>13}")
    rows = []
    groups = sorted({g for g, _ in sums}, key=lambda g: (g != "overall", g))
    for group in groups:
        for region in ("all", "A3"):
            d, floor, model_err, gap = sums[(group, region)] / sums[(group, "n_" + region)][0]
            rows.append({"group": group, "region": region, "dummy": d, "floor": floor,
                         "model": model_err, "model_minus_sym": gap})
            print(f"{group:<10}{region:<7}{d:>9.4f}{floor:>9.4f}{floor / d:>9.3f}"
                  f"{model_err / d:>9.3f}{gap:>13.4f}")
    return rows


if __name__ == "__main__":
    main()
