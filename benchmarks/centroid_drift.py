"""How far the atoms' centroid moves: in the teacher's relaxations, and in the network's
predictions without ``conserve_centroid`` (the reason it is on by default).

    python benchmarks/centroid_drift.py --data 'data/*_00[0-5].db' --split test

For every pair of the split: the length (Å) of the mean displacement of the atoms from
the unrelaxed to the relaxed structure (the label), and from the unrelaxed structure to
the prediction of the weights with ``conserve_centroid`` switched off and on. Prints the
median and the largest of each.
"""

from __future__ import annotations

import argparse
import logging

import numpy as np
import torch

from ase_definet import get_model
from ase_definet.core.predict import predict_sites
from ase_definet.data.store import is_cold, iter_pairs
from ase_definet.train.dataset import expand_paths

logger = logging.getLogger("centroid_drift")


def drift(moved: np.ndarray, start: np.ndarray) -> float:
    """|mean(moved - start)| (Å) over atoms, both (n_atoms, 3) Å."""
    return float(np.linalg.norm((moved - start).mean(axis=0)))


def main(argv: list[str] | None = None) -> dict[str, np.ndarray]:
    """Prints the table; returns the drifts (Å) per pair: ``label``, ``off``, ``on``."""
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="default")
    p.add_argument("--data", nargs="+", default=["data/*_00[0-5].db"])
    p.add_argument("--split", default="test")
    p.add_argument("--cold", action="store_true", help="only pairs relaxed from the input")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(args.threads)
    on = get_model(args.model, "cpu")
    off = on.blank_like(conserve_centroid=False)  # the shared instance stays untouched
    off.load_state_dict(on.state_dict())
    pairs = [q for q in iter_pairs(expand_paths(args.data))
             if q.info.get("split") == args.split and (is_cold(q.info) or not args.cold)]
    if not pairs:
        raise ValueError(f"no pairs of split {args.split!r} in {args.data}")
    rows = {"label": [], "off": [], "on": []}
    for i in range(0, len(pairs), args.batch_size):
        chunk = pairs[i:i + args.batch_size]
        structures = [q.structure for q in chunk]
        for name, model in (("off", off), ("on", on)):
            for q, s, pred in zip(chunk, structures, predict_sites(model, structures)):
                rows[name].append(drift(pred[s.atom_sites], q.unrelaxed.positions))
        rows["label"] += [drift(q.relaxed_positions, q.unrelaxed.positions) for q in chunk]
    logger.info("centroid drift (Å) over %d %s pairs of %s:", len(pairs), args.split,
                " ".join(args.data))
    out = {k: np.asarray(v) for k, v in rows.items()}
    for name, what in (("label", "teacher's relaxation"),
                       ("off", f"{args.model}, conserve_centroid off"),
                       ("on", f"{args.model}, conserve_centroid on")):
        logger.info("  %-44s median %.2e  max %.2e", what, np.median(out[name]),
                    out[name].max())
    return out


if __name__ == "__main__":
    main()
