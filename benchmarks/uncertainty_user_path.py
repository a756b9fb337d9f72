"""The uncertainty as a user reads it: ``DefiNetRelaxer(...).run()`` and ``.uncertainty``
on held-out pairs, each handed over shuffled and shifted as a user's files might be.

    python benchmarks/uncertainty_user_path.py --data 'data/variety/*.db' --split test

For every pair (cold labels only: relaxed from the unrelaxed structure), the unrelaxed
structure's atoms are permuted, both it and its host moved by a random rigid offset of up
to 3 Å, and the defective one by up to 0.3 Å more; then it is relaxed with
``DefiNetRelaxer(atoms, pristine=host).run()``; the actual per-atom error is the
minimum-image distance of ``relaxer.atoms`` to the label (permuted and shifted alike).
Per group (overall, per axis, material and supercell-size class): the Spearman rank
correlation between ``.uncertainty`` and the actual error per atom, between the
per-structure means, the fraction of atoms below ``.bound90``, and the structures with an
out-of-range warning. Results in ``benchmarks/results/uncertainty_user_path.txt``.
"""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
import warnings
from pathlib import Path

import numpy as np
import torch
from ase.geometry import find_mic
from tqdm import tqdm

from ase_definet import DefiNetRelaxer
from ase_definet.core.checkpoint import weights_label
from ase_definet.core.fileio import atomic_write
from ase_definet.data.store import is_cold, iter_pairs
from ase_definet.train.calibrate import format_report, group_by, trust_metrics
from ase_definet.train.dataset import expand_paths

ROOT = Path(__file__).resolve().parent.parent


def relax_one(pair, weights: str, rng: np.random.Generator) -> dict:
    """Relax one pair through the user path; per-atom uncertainty, bound and error (Å)."""
    atoms, host = pair.unrelaxed.copy(), pair.pristine.copy()
    order = rng.permutation(len(atoms))
    frame = rng.uniform(-3.0, 3.0, size=3)  # both files in another frame
    shift = frame + rng.uniform(-0.3, 0.3, size=3)  # and the defective one a bit off
    atoms = atoms[order]
    atoms.positions += shift
    host.positions += frame
    target = pair.relaxed_positions[order] + shift
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        relaxer = DefiNetRelaxer(atoms, pristine=host, model=weights, logfile=None)
        relaxer.run()
    _, err = find_mic(relaxer.atoms.positions - target, pair.pristine.cell[:],
                      pair.pristine.pbc)
    return {"info": pair.info, "u": relaxer.uncertainty, "b": relaxer.bound90, "e": err,
            "warned": any(issubclass(w.category, UserWarning) for w in caught)}


def report(rows: list[dict]) -> str:
    """Per group (overall, axis, material, supercell-size class): the trust metrics and
    the structures with an out-of-range warning."""
    table = []
    for name, rs in group_by(rows, lambda r: r["info"], ("axis", "material", "cells"),
                             defaults={"axis": "original"}).items():
        table.append({"group": name, **trust_metrics([r["u"] for r in rs],
                                                     [r["b"] for r in rs],
                                                     [r["e"] for r in rs]),
                      "warned": sum(r["warned"] for r in rs)})
    return format_report([table[0], *sorted(table[1:], key=lambda r: r["group"])], "warned")


def main(argv: list[str] | None = None) -> str:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", nargs="+", required=True)
    p.add_argument("--split", default="test", help="a split, or 'all'")
    p.add_argument("--weights", default="default")
    p.add_argument("--limit", type=int, default=None, help="at most this many pairs")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path,
                   default=ROOT / "benchmarks/results/uncertainty_user_path.txt")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    torch.set_num_threads(1)
    where = {} if args.split == "all" else {"split": args.split}
    pairs = [q for q in iter_pairs(expand_paths(args.data), **where) if is_cold(q.info)]
    pairs = pairs[: args.limit]
    if len(pairs) < 3:
        raise SystemExit(f"only {len(pairs)} cold pair(s) in {args.data} ({args.split})")
    rng = np.random.default_rng(args.seed)
    rows = [relax_one(q, args.weights, rng) for q in tqdm(pairs, desc="relaxing", unit="pair")]
    command = ["python", "benchmarks/uncertainty_user_path.py", "--data", *args.data,
               "--split", args.split, "--weights", args.weights, "--seed", str(args.seed),
               *(["--limit", str(args.limit)] if args.limit else [])]
    text = "\n".join([f"# {shlex.join(command)}",
                      f"# weights: {weights_label(args.weights)}",
                      f"# {len(rows)} structures, each permuted and shifted before "
                      "DefiNetRelaxer(atoms, pristine=host).run()", report(rows)]) + "\n"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(args.out, lambda tmp: tmp.write_text(text))
    sys.stdout.write(text)
    return text


if __name__ == "__main__":
    main()
