"""Where is the error? A model's per-atom errors binned by how far the teacher moved
each atom, and how much of the total error its worst atoms carry.

    python benchmarks/error_breakdown.py [--model default] [--data data] [--split val]

Printed per bin of the teacher's displacement |d| (Å): the share of atoms, the share of
the model's total error and of the Dummy's, and MAE / Dummy within the bin; then the
share of the total error carried by the worst 1 % and 5 % of atoms; then MAE / Dummy per
defect concentration of the pairs. If a few atoms that move far carry most of the error,
more capacity for large, rare moves matters more than precision in the far field.
"""

from __future__ import annotations

from itertools import pairwise

import numpy as np

from ase_definet.train.evaluate import evaluate_split_from_cli

EDGES = (0.0, 0.02, 0.05, 0.1, 0.2, 0.4, 0.8, np.inf)


def breakdown(err: np.ndarray, dummy: np.ndarray, edges=EDGES) -> list[dict]:
    """Rows per displacement bin from per-atom errors and Dummy errors (|d|), Å."""
    rows = []
    for lo, hi in pairwise(edges):
        s = (dummy >= lo) & (dummy < hi)
        if not s.any():
            continue
        rows.append({"lo": lo, "hi": hi, "atoms": float(s.mean()),
                     "error_share": float(err[s].sum() / err.sum()),
                     "dummy_share": float(dummy[s].sum() / dummy.sum()),
                     "ratio": float(err[s].mean() / dummy[s].mean())})
    return rows


def worst_share(err: np.ndarray, fraction: float) -> float:
    """Share of the summed error carried by the worst ``fraction`` of atoms."""
    k = max(int(len(err) * fraction), 1)
    return float(np.sort(err)[::-1][:k].sum() / err.sum())


def main(argv: list[str] | None = None) -> dict:
    args, _model, dataset, arrays = evaluate_split_from_cli(__doc__, argv, split="val")
    err = np.linalg.norm(arrays["pred"] - arrays["true"], axis=1)
    dummy = np.linalg.norm(arrays["true"], axis=1)
    rows = breakdown(err, dummy)
    ratio = err.mean() / dummy.mean()
    print(f"model {args.model}; {len(dataset)} {args.split} pairs, {len(err)} atoms; "
          f"MAE {err.mean():.4f} Å, Dummy {dummy.mean():.4f} Å ({ratio:.3f}x)")
    print(f"{'teacher |d| Å':<14}{'atoms':>7}{'error':>8}{'dummy':>8}{'MAE/Dummy':>11}")
    for r in rows:
        hi = "inf" if np.isinf(r["hi"]) else f"{r['hi']:.2f}"
        print(f"{r['lo']:.2f}-{hi:<9}{r['atoms']:>7.1%}{r['error_share']:>8.1%}"
              f"{r['dummy_share']:>8.1%}{r['ratio']:>11.3f}")
    worst = {f: worst_share(err, f) for f in (0.01, 0.05)}
    print(f"worst 1 % of atoms carry {worst[0.01]:.1%} of the error, worst 5 % "
          f"{worst[0.05]:.1%}")
    pair = np.repeat(np.arange(len(dataset)), [int(s.mask.sum()) for s in dataset.samples])
    by_conc = by_concentration(err, dummy, [s.info for s in dataset.samples], pair)
    print(f"{'concentration':<14}{'pairs':>7}{'MAE/Dummy':>11}")
    for conc, (n, conc_ratio) in by_conc.items():
        print(f"{conc:<14}{n:>7}{conc_ratio:>11.3f}")
    return {"rows": rows, "worst": worst, "by_concentration": by_conc}


def by_concentration(err: np.ndarray, dummy: np.ndarray, infos: list[dict],
                     pair: np.ndarray) -> dict[str, tuple[int, float]]:
    """MAE / Dummy per defect concentration of the pairs ('low' for low density).

    ``err``, ``dummy``: per-atom errors (n_atoms,) Å; ``pair``: the pair index of each
    atom (n_atoms,); ``infos``: the pairs' metadata. Returns {label: (pairs, ratio)}."""
    labels = ["low" if i.get("density") == "low" else f"{float(i.get('concentration', 0)):.3f}"
              for i in infos]
    out = {}
    for label in sorted(set(labels)):
        idx = [k for k, x in enumerate(labels) if x == label]
        sel = np.isin(pair, idx)
        out[label] = (len(idx), float(err[sel].sum() / dummy[sel].sum()))
    return out


if __name__ == "__main__":
    main()
