"""How well the per-atom uncertainty tracks the actual error, on held-out pairs.

    python benchmarks/uncertainty.py --data 'data/*_00[0-5].db' --split test

For the weights' stored calibration (``definet calibrate``), per group (overall, per
material, density and axis): the Spearman rank correlation between predicted and actual
per-atom error, and between per-structure mean uncertainty and MAE; the fraction of atoms
whose error lies below the predicted 90 % bound; how many structures are flagged. Writes
the table to ``benchmarks/results/uncertainty.txt`` and a reliability plot (mean actual
against mean predicted error in ten bins of prediction, and the 90 % coverage per bin) to
``docs/uncertainty_reliability.png``.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np
import torch

from ase_definet.core.checkpoint import load_checkpoint, weights_label
from ase_definet.core.uncertainty import calibrations_from_metadata
from ase_definet.data.store import is_cold, iter_pairs
from ase_definet.train.calibrate import collect, format_report, uncertainty_report
from ase_definet.train.dataset import PairDataset, expand_paths

ROOT = Path(__file__).resolve().parent.parent


def reliability_plot(records, cal, stages: int, path: Path) -> None:
    from matplotlib.figure import Figure

    u = np.concatenate([cal.expected_error(r.spread[stages], r.shift[stages]) for r in records])
    b = np.concatenate([cal.bound90(r.spread[stages], r.shift[stages]) for r in records])
    e = np.concatenate([r.error[stages] for r in records])
    bins = np.array_split(np.argsort(u), 10)
    pred = [u[i].mean() for i in bins]
    actual = [e[i].mean() for i in bins]
    cover = [(e[i] <= b[i]).mean() for i in bins]
    fig = Figure(figsize=(9, 4))
    ax1, ax2 = fig.subplots(1, 2)
    top = max(max(pred), max(actual)) * 1.1
    ax1.plot([0, top], [0, top], "k--", lw=0.8, label="ideal")
    ax1.plot(pred, actual, "o-", label="DefiNet")
    ax1.set(xlabel="mean predicted error [Å]", ylabel="mean actual error [Å]",
            title="reliability (10 bins of prediction)")
    ax1.legend()
    ax2.axhline(0.9, color="k", ls="--", lw=0.8, label="0.90")
    ax2.plot(range(1, 11), cover, "o-")
    ax2.set(xlabel="bin of predicted error (low to high)", ylabel="fraction below bound90",
            ylim=(0.5, 1.0), title="90 % bound coverage")
    ax2.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", default="default")
    p.add_argument("--data", nargs="+", default=["data/*_00[0-5].db"])
    p.add_argument("--split", default="test", help="a split, or 'all'")
    p.add_argument("--cold", action="store_true", help="only pairs relaxed from the unrelaxed "
                   "structure (not warm-started from a model's prediction)")
    p.add_argument("--stages", type=int, default=None, help="stages run (default all)")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/uncertainty.txt")
    p.add_argument("--plot", type=Path, default=ROOT / "docs/uncertainty_reliability.png")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(1)
    model, meta = load_checkpoint(args.weights)
    stages = args.stages or model.config.refine + 1
    cals = calibrations_from_metadata(meta)
    if stages not in cals:
        raise SystemExit(f"{args.weights} has no uncertainty calibration for {stages} "
                         "stage(s): run definet calibrate first")
    where = {} if args.split == "all" else {"split": args.split}
    pairs = [q for q in iter_pairs(expand_paths(args.data), **where)
             if not args.cold or is_cold(q.info)]
    ds = PairDataset.from_pairs(pairs, model.cutoff, model.max_neighbors)
    records = collect(model, ds)
    rows = uncertainty_report(records, cals[stages], stages)
    text = (f"# python benchmarks/uncertainty.py --weights {args.weights} --data "
            f"{' '.join(repr(d) for d in args.data)} --split {args.split} --stages {stages}"
            f"{' --cold' if args.cold else ''}\n"
            f"# weights: {weights_label(args.weights)}; {len(records)} structures; "
            "calibration fitted on the val split (definet calibrate)\n"
            + format_report(rows) + "\n")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    reliability_plot(records, cals[stages], stages, args.plot)
    print(text)


if __name__ == "__main__":
    main()
