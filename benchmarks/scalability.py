"""Scalability of accuracy: a model trained on 8x8 cells applied to 12x12 and 16x16 cells
holding the same defects (paper, "Scalability"), against teacher relaxations.

    python benchmarks/scalability.py --n 5 --sizes 8 12 16 [--model default]

Low-density MoS2 test configurations (1-3 defects) are embedded, as one cluster, into
n x n hosts; the teacher (CHGNet, FIRE to 0.01 eV/Å) relaxes every cell once (cached in
``--cache``, an ase.db of the pair schema, so reruns only evaluate); the model's
coordinate MAE and the Dummy MAE (the unrelaxed input) are printed per size.
"""

from __future__ import annotations

import argparse
import logging
from dataclasses import replace
from pathlib import Path

from ase.db import connect

from ase_definet import get_model
from ase_definet.core.hosts import get_host
from ase_definet.data.configs import embed, low_density_configs
from ase_definet.data.label import relax_fixed_cell
from ase_definet.data.store import Pair, iter_pairs, write_pair
from ase_definet.train import PairDataset
from ase_definet.train.evaluate import evaluate_model

logger = logging.getLogger("scalability")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="default")
    p.add_argument("--n", type=int, default=5, help="defect configurations")
    p.add_argument("--sizes", type=int, nargs="+", default=[8, 12, 16])
    p.add_argument("--teacher", default="chgnet")
    p.add_argument("--cache", type=Path, default=Path("benchmarks/scalability.db"))
    p.add_argument("--seed", type=int, default=123)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    mos2 = get_host("MoS2")
    n_basis = len(mos2.unit_cell)
    # configurations beyond the data set's low-density prefix: not seen in training
    configs = low_density_configs(mos2, 400 + args.n, seed=args.seed)[-args.n:]
    done = {(r.config_id, r.size) for r in connect(args.cache).select()} \
        if args.cache.exists() else set()
    calc = None
    for c in configs:
        for n in args.sizes:
            if (c.config_id, n) in done:
                continue
            if calc is None:
                from ase_definet.data.teacher import get_teacher

                calc = get_teacher(args.teacher)
            host = replace(mos2, supercell=(n, n, 1)).pristine()
            spec = embed(c.spec, 8, n, n_basis)
            unrelaxed = spec.apply(host)
            res = relax_fixed_cell(unrelaxed, calc, fmax=0.01, steps=2000)
            info = {"config_id": c.config_id, "size": n, "material": "MoS2",
                    "density": f"{n}x{n}", "converged": res.converged, "steps": res.steps,
                    "split": "test", "teacher": args.teacher}
            with connect(args.cache) as db:
                write_pair(db, Pair(unrelaxed, res.positions, host, spec, info))
            logger.info("%s %dx%d: %d teacher steps", c.config_id, n, n, res.steps)
    model = get_model(args.model, "cpu")
    pairs = [pr for pr in iter_pairs([args.cache])
             if pr.info["config_id"] in {c.config_id for c in configs}]
    ds = PairDataset.from_pairs(pairs, model.cutoff, model.max_neighbors, progress=False)
    acc, _ = evaluate_model(model, ds)
    print(f"{'cell':>7}{'pairs':>6}{'MAE':>9}{'Dummy':>9}{'A3':>9}{'Dummy A3':>10}")
    for n in args.sizes:
        g = f"MoS2/{n}x{n}"
        cnt = sum(1 for pr in pairs if pr.info["size"] == n)
        print(f"{n:>4}x{n:<2}{cnt:>6}{acc.mae(g):9.4f}{acc.mae(g, 'dummy_all'):9.4f}"
              f"{acc.mae(g, 'A3'):9.4f}{acc.mae(g, 'dummy_A3'):10.4f}")


if __name__ == "__main__":
    main()
