"""Regenerate the README's pictures from the shipped weights and the committed data.

    python docs/make_figures.py [--model default] [--out docs]

* ``demo_field.png``: ``definet demo --plot`` (the built-in MoS2 demo structure);
* ``test_pair_<prefix>.png``: for each ``--pairs`` prefix, the test pair with the median
  mean teacher displacement among those whose ``config_id`` starts with it:
  the teacher's displacement, the model's displacement and the error on one scale
  (``definet plot --reference --compare``);
* ``parity.png``: predicted against teacher displacement and error against distance to
  the nearest defect over the whole test split (``definet evaluate``).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np

from ase_definet import DefectStructure, get_model
from ase_definet.cli import main as cli
from ase_definet.core.predict import predict_sites
from ase_definet.data.store import iter_pairs
from ase_definet.plot import plot_comparison
from ase_definet.train import PairDataset
from ase_definet.train.dataset import expand_paths
from ase_definet.train.evaluate import evaluate_model, plot_parity

logger = logging.getLogger("make_figures")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="default")
    p.add_argument("--data", nargs="+", default=["data"])
    p.add_argument("--out", type=Path, default=Path("docs"))
    p.add_argument("--pairs", nargs="+", default=["MoS2-low", "MoS2-high"],
                   help="config_id prefixes: a typical test pair of each is drawn")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args.out.mkdir(parents=True, exist_ok=True)
    cli(["demo", "--model", args.model, "--plot", str(args.out / "demo_field.png")])

    model = get_model(args.model, "cpu")
    test = [pr for pr in iter_pairs(expand_paths(args.data), split="test")
            if set(pr.unrelaxed.numbers.tolist()) <= set(model.elements)]
    for prefix in args.pairs:
        pool = [pr for pr in test if pr.info["config_id"].startswith(prefix)]
        if not pool:
            logger.warning("no test pair with config_id %s*", prefix)
            continue
        # a typical pair, not a chosen one: the median mean teacher displacement
        pool.sort(key=lambda pr: float(np.linalg.norm(
            pr.relaxed_positions - pr.unrelaxed.positions, axis=1).mean()))
        pair = pool[len(pool) // 2]
        s = DefectStructure.from_pair(pair.unrelaxed, pair.pristine, model.elements)
        predicted = predict_sites(model, [s])[0][s.spec.site_index(s.n_sites)]
        path = args.out / f"test_pair_{prefix.replace('-', '_')}.png"
        plot_comparison(s, predicted, pair.relaxed_positions, path,
                        title=f"{pair.info['config_id']} (test split, "
                        f"{pair.spec.n_defects} defects): model '{args.model}' against "
                        "the teacher")
        logger.info("wrote %s", path)

    ds = PairDataset.from_pairs(test, model.cutoff, model.max_neighbors, progress=False)
    _, arrays = evaluate_model(model, ds, collect=True)
    plot_parity(arrays, args.out / "parity.png",
                title=f"'{args.model}' on the {len(test)} test pairs")
    logger.info("wrote %s", args.out / "parity.png")


if __name__ == "__main__":
    main()
