"""Count the pairs of a data set: per material, density and split; converged or not.

    python -m ase_definet.data.summary data        (or: definet summary data)
"""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path

import numpy as np
from ase.db import connect


def summarize(paths: list[Path]) -> str:
    """A text table of the pairs in ``paths`` (ase.db files of the pair schema), per
    material and group: the density, with the lattice axis before it off the shipped
    lattice (``strain/low``). ``warm`` counts the converged pairs labelled from a
    model's prediction (``label_start = "prediction"``), the rest were labelled cold."""
    conv: Counter = Counter()
    failed: Counter = Counter()
    warm: Counter = Counter()  # converged pairs labelled from a model's prediction
    steps: dict[tuple, list[int]] = {}
    for p in paths:
        with connect(p) as db:
            for row in db.select(columns=["key_value_pairs"]):
                density = row.get("density", "-")  # runs: no density
                axis = row.get("axis", "original")  # variety pairs: strain/low, size/high
                key = (row.material, density if axis == "original" else f"{axis}/{density}")
                if row.converged:
                    conv[key + (row.get("split"),)] += 1  # runs: no split yet
                    steps.setdefault(key, []).append(int(row.steps))
                    warm[key] += row.get("label_start") == "prediction"
                else:
                    failed[key] += 1
    keys = sorted({k[:2] for k in conv} | set(failed))
    lines = [f"{'material':<9}{'group':<12}{'train':>7}{'val':>6}{'test':>6}{'total':>7}"
             f"{'not conv.':>11}{'median steps':>14}{'warm':>6}"]
    totals = Counter()
    for m, d in keys:
        row = [conv[(m, d, s)] for s in ("train", "val", "test")]
        n = sum(v for k, v in conv.items() if k[:2] == (m, d))  # with pairs of no split
        totals.update({"train": row[0], "val": row[1], "test": row[2], "all": n,
                       "failed": failed[(m, d)], "warm": warm[(m, d)]})
        med = np.median(steps[(m, d)]) if steps.get((m, d)) else float("nan")
        lines.append(f"{m:<9}{d:<12}{row[0]:>7}{row[1]:>6}{row[2]:>6}{n:>7}"
                     f"{failed[(m, d)]:>11}{med:>14.0f}{warm[(m, d)]:>6}")
    lines.append(f"{'all':<21}{totals['train']:>7}{totals['val']:>6}{totals['test']:>6}"
                 f"{totals['all']:>7}{totals['failed']:>11}{'':>14}{totals['warm']:>6}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("paths", nargs="+", help="ase.db files or folders of them")
    args = p.parse_args(argv)
    from .store import expand_paths

    print(summarize(expand_paths(args.paths)))


if __name__ == "__main__":
    main()
