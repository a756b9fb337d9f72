"""Two teacher-steps runs on the same pairs, compared pair by pair.

    python benchmarks/steps_paired.py benchmarks/results/teacher_steps_low_all_hosts_v20.csv \
        benchmarks/results/teacher_steps_low_all_hosts_v21.csv

Reads the CSVs of ``benchmarks/teacher_steps.py --csv`` and prints, over the pairs both
hold (by ``config_id``), the median paired difference in steps from the second start
(``steps_definet``; B minus A), the totals, and on how many pairs B took fewer or more.
Medians of two runs can differ by more than the paired differences suggest.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import numpy as np


def read_steps(path: Path) -> dict[str, int]:
    """``config_id`` -> steps from the second start, from a teacher_steps.py CSV."""
    with open(path, newline="") as f:
        return {row["config_id"]: int(row["steps_definet"]) for row in csv.DictReader(f)}


def compare(a: dict[str, int], b: dict[str, int]) -> str:
    """One line: paired differences B - A over the pairs both runs hold."""
    common = sorted(a.keys() & b.keys())
    if not common:
        raise SystemExit("the two CSVs share no config_id")
    d = np.array([b[k] - a[k] for k in common])
    return (f"{len(common)} pairs: B - A median {np.median(d):+.0f} steps; totals "
            f"{sum(b[k] for k in common)} (B) vs {sum(a[k] for k in common)} (A); "
            f"B fewer on {(d < 0).sum()}, more on {(d > 0).sum()}")


def main(argv: list[str] | None = None) -> str:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("a", type=Path, help="CSV of run A")
    p.add_argument("b", type=Path, help="CSV of run B")
    args = p.parse_args(argv)
    line = compare(read_steps(args.a), read_steps(args.b))
    sys.stdout.write(line + "\n")
    return line


if __name__ == "__main__":
    main()
