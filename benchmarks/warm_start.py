"""Are warm-started labels the same labels? Teacher relaxations started from the model's
prediction against the stored ones started from the unrelaxed structure.

    python benchmarks/warm_start.py --data 'data/[GIWhB]*_009.db' --per-file 6

For each stored pair labelled from the unrelaxed structure (``--splits``, by default val
and test only, so the model never trained on them):
relax the unrelaxed structure again with the teacher, but starting from the model's
prediction (``ase_definet.data.label.relax_from``), and compare with the stored label:
the mean and largest distance between the two relaxed structures (Å; compare with the
label noise of data/README.md, 0.004-0.014 Å), the energy difference (meV), and the
teacher's FIRE steps from either start. Results in ``benchmarks/results/warm_start.txt``.
"""

from __future__ import annotations

import argparse
import logging
import statistics
from pathlib import Path

import torch
from ase.geometry import find_mic

from ase_definet.core.checkpoint import get_model
from ase_definet.data.label import predicted_start, relax_from
from ase_definet.data.store import is_cold, iter_pairs
from ase_definet.data.teacher import get_teacher
from ase_definet.train.dataset import expand_paths

ROOT = Path(__file__).resolve().parent.parent
logger = logging.getLogger("warm_start")


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", nargs="+", required=True)
    p.add_argument("--per-file", type=int, default=6, help="pairs per file")
    p.add_argument("--splits", nargs="+", default=["val", "test"],
                   help="splits to draw from (all three for pairs no weights trained on)")
    p.add_argument("--weights", default="default")
    p.add_argument("--teacher", default="chgnet")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/warm_start.txt")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(1)
    model = get_model(args.weights, "cpu")
    calc = get_teacher(args.teacher)
    rows = []
    for path in expand_paths(args.data):
        held = [q for s in args.splits for q in iter_pairs([path], split=s)
                if is_cold(q.info)]  # cold labels
        for pair in held[: args.per_file]:
            info = pair.info
            start = predicted_start(model, pair.pristine, pair.spec)
            res = relax_from(pair.unrelaxed, start, calc, fmax=info["relax_fmax"],
                             steps=1000, optimizer=info["optimizer"])
            cell, pbc = pair.pristine.cell[:], pair.pristine.pbc
            _, d = find_mic(res.positions - pair.relaxed_positions, cell, pbc)
            _, d0 = find_mic(start - pair.relaxed_positions, cell, pbc)
            rows.append({"id": info["config_id"], "group": f"{info['material']}/"
                         f"{info.get('axis', 'original')}/{info['density']}",
                         "mean_dist": float(d.mean()), "max_dist": float(d.max()),
                         "start_dist": float(d0.mean()),
                         "dE_meV": 1e3 * (res.energy - info["relaxed_energy"]),
                         "steps_cold": int(info["steps"]), "steps_warm": res.steps,
                         "converged": res.converged})
            r = rows[-1]
            logger.info("%s: %.4f Å apart (max %.3f), dE %.1f meV, steps %d -> %d", r["id"],
                        r["mean_dist"], r["max_dist"], r["dE_meV"], r["steps_cold"],
                        r["steps_warm"])
    lines = [f"# python benchmarks/warm_start.py --data {' '.join(map(repr, args.data))} "
             f"--per-file {args.per_file} --weights {args.weights}",
             f"# {len(rows)} pairs of splits {'/'.join(args.splits)}; distances between the "
             "warm-started and the "
             "stored label, medians per group",
             f"{'group':22s}{'pairs':>6s}{'mean dist':>10s}{'max dist':>9s}{'dE meV':>8s}"
             f"{'steps cold':>11s}{'steps warm':>11s}{'saved':>7s}{'>0.02 Å':>8s}"]
    groups = {"all": rows} | {g: [r for r in rows if r["group"] == g]
                              for g in dict.fromkeys(r["group"] for r in rows)}
    for g, rs in groups.items():
        med = {k: statistics.median(r[k] for r in rs) for k in rs[0] if k not in ("id", "group")}
        saved = 1 - sum(r["steps_warm"] for r in rs) / sum(r["steps_cold"] for r in rs)
        lines.append(f"{g:22s}{len(rs):6d}{med['mean_dist']:10.4f}{med['max_dist']:9.3f}"
                     f"{med['dE_meV']:8.1f}{med['steps_cold']:11.0f}{med['steps_warm']:11.0f}"
                     f"{saved:7.0%}{sum(r['mean_dist'] > 0.02 for r in rs):8d}")
    text = "\n".join(lines) + "\n"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)
    return rows


if __name__ == "__main__":
    main()
