"""How much of the error is the two halves of a layer sliding against each other?

    python benchmarks/sliding_mode.py [--model default] [--data data] [--splits val test]

In the three-plane-thick and thicker monolayers (InSe, GaSe: Se-X-X-Se; MoS2, WSe2: S-M-S;
BP: puckered), the teacher's relaxations at high defect density often shift the upper
half of the layer in-plane relative to the lower half: a collective, cell-wide soft
mode. For each material this prints, over the chosen splits:

* the teacher's sliding ``|s|``, with ``s`` = mean in-plane displacement of the atoms
  above the layer's mid-plane minus that of the atoms below it (Å, median over pairs),
  and the share of pairs where it exceeds 0.05 and 0.1 Å;
* the same quantity in the model's prediction, and the error of the predicted ``s``;
* the model's coordinate MAE, the MAE it would have if only its ``s`` were replaced by the
  teacher's (the halves shifted by +/- half the difference), and the Dummy MAE;
* the teacher's net sliding force at the unrelaxed start (eV/Å, median; from the forces
  stored with each pair), and the median cosine between it and the teacher's sliding
  over the pairs that slide by more than 0.1 Å: how far the start tips the direction.

The gap between the two MAEs is the part of the error that is this one global mode.

With ``--pooled MATERIAL --density all``, also one line: MAE / Dummy pooled over every atom
of the chosen pairs (all materials), as it is, with the teacher's sliding put into the
pairs of MATERIAL, and with the model's own sliding taken out of them.

    python benchmarks/sliding_mode.py --scan InSe GaSe MoS2 [--teacher chgnet]

With ``--scan``, no model: each pristine host (as the data generator builds it) has its
upper half slid against its lower half by 0-0.5 Å along x and y, and the teacher gives
the energy change, the largest force component and the net sliding force (mean in-plane
force of the upper half minus that of the lower half). A negative energy change means the
flat host is a saddle of the teacher along this mode: defect relaxations then slide
spontaneously, in a direction the defects only tip. Forces below the data's 0.01 eV/Å
criterion over a range of slides mean FIRE may stop anywhere in that range.
"""

from __future__ import annotations

import argparse
import logging
import statistics

import numpy as np

from ase_definet import get_model
from ase_definet.train.dataset import PairDataset, load_pairs
from ase_definet.train.evaluate import evaluate_model

logger = logging.getLogger("sliding_mode")
SCAN_AMPLITUDES = (0.0, 0.05, 0.1, 0.2, 0.3, 0.5)


def halves(z: np.ndarray, mid: float, gap: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """Boolean masks of the atoms above and below the mid-plane ``mid`` (Å)."""
    return z > mid + gap, z < mid - gap


def layered(top: np.ndarray, bottom: np.ndarray) -> bool:
    """Whether a layer has atoms on both sides of its mid-plane (h-BN has not)."""
    return bool(top.any() and bottom.any())


def sliding(disp: np.ndarray, top: np.ndarray, bottom: np.ndarray) -> np.ndarray:
    """(2,) Å: mean in-plane displacement of ``top`` minus that of ``bottom``."""
    return disp[top, :2].mean(0) - disp[bottom, :2].mean(0)


def analyse(model, dataset: PairDataset) -> list[dict]:
    """One row per pair: sliding (Å; NaN for a flat layer, which has no halves), mean
    errors (Å) of the model, of the model with the teacher's sliding put in, and of the
    Dummy, and the summed errors behind them (also of the model with its own sliding
    taken out) for ratios over several pairs."""
    _, arrays = evaluate_model(model, dataset, collect=True)
    sizes = [int(s.mask.sum()) for s in dataset]
    starts = np.cumsum([0] + sizes)
    rows = []
    for k, sample in enumerate(dataset):
        sl = slice(starts[k], starts[k + 1])
        true, pred = arrays["true"][sl], arrays["pred"][sl]
        z = sample.graph.positions[sample.mask][:, 2]
        top, bottom = halves(z, float(sample.graph.positions[:, 2].mean()))
        flat = not layered(top, bottom)
        s_true = s_pred = np.full(2, np.nan)
        fixed = none = pred
        if not flat:
            s_true, s_pred = sliding(true, top, bottom), sliding(pred, top, bottom)
            fixed, none = pred.copy(), pred.copy()
            for out, shift in ((fixed, s_true - s_pred), (none, -s_pred)):
                out[top, :2] += shift / 2
                out[bottom, :2] -= shift / 2
        err = {name: np.linalg.norm(x - true, axis=1)
               for name, x in (("mae", pred), ("mae_exact_slide", fixed),
                               ("mae_no_slide", none), ("dummy", np.zeros_like(true)))}
        rows.append({"material": sample.info.get("material", "?"), "flat": flat,
                     "slide_true": float(np.linalg.norm(s_true)),
                     "slide_pred": float(np.linalg.norm(s_pred)),
                     "slide_err": float(np.linalg.norm(s_pred - s_true)),
                     **{name: float(e.mean()) for name, e in err.items()},
                     **{name + "_sum": float(e.sum()) for name, e in err.items()}})
    return rows


def start_force_alignment(pairs) -> dict[str, dict[str, float]]:
    """Per material: the median net sliding force (eV/Å) of the teacher at the unrelaxed
    start (the stored initial forces), and the median cosine between it and the
    teacher's final sliding over pairs that slide by more than 0.1 Å (NaN if none)."""
    by_mat: dict[str, list[tuple[float, float, float]]] = {}
    for pair in pairs:
        u = pair.unrelaxed
        if u.calc is None or "forces" not in u.calc.results:
            continue
        top, bottom = halves(u.positions[:, 2], float(pair.pristine.positions[:, 2].mean()))
        if not layered(top, bottom):
            continue
        s = sliding(pair.relaxed_positions - u.positions, top, bottom)
        f = sliding(u.calc.results["forces"], top, bottom)
        cos = float(s @ f / (np.linalg.norm(s) * np.linalg.norm(f) + 1e-12))
        by_mat.setdefault(str(pair.info.get("material", "?")), []).append(
            (float(np.linalg.norm(s)), float(np.linalg.norm(f)), cos))
    out = {}
    for mat, vals in by_mat.items():
        v = np.array(vals)
        big = v[:, 0] > 0.1
        out[mat] = {"force": float(np.median(v[:, 1])),
                    "cos_big": float(np.median(v[big, 2])) if big.any() else float("nan")}
    return out


def pooled_ratios(rows: list[dict], material: str) -> dict[str, float]:
    """MAE / Dummy pooled over all atoms of ``rows``: of the model as it is, with the
    teacher's sliding put into the pairs of ``material``, and with the model's own
    sliding taken out of them."""
    dummy = sum(r["dummy_sum"] for r in rows)
    out = {}
    for name, key in (("model", "mae_sum"), ("exact_slide", "mae_exact_slide_sum"),
                      ("no_slide", "mae_no_slide_sum")):
        out[name] = sum(r[key] if r["material"] == material else r["mae_sum"]
                        for r in rows) / dummy
    return out


def scan(host, calc, amplitudes=SCAN_AMPLITUDES, angles=(0.0, 90.0)) -> list[dict]:
    """Slide the upper half of ``host`` against its lower half (Å, total relative shift,
    along ``angles`` in degrees from x) and record the teacher's response: energy change
    (meV per cell), largest force component and net sliding force (eV/Å)."""
    z = host.positions[:, 2]
    top, bottom = halves(z, float(z.mean()))
    if not layered(top, bottom):
        raise ValueError("a flat layer has no upper and lower half to slide")
    ref = host.copy()
    ref.calc = calc
    e0 = ref.get_potential_energy()  # the unslid host
    rows = []
    for amp in amplitudes:
        for ang in angles:
            a = host.copy()
            a.calc = calc
            v = amp * np.array([np.cos(np.radians(ang)), np.sin(np.radians(ang)), 0.0])
            a.positions[top] += v / 2
            a.positions[bottom] -= v / 2
            e, f = a.get_potential_energy(), a.get_forces()
            rows.append({"slide": float(amp), "angle": float(ang), "dE_meV": 1e3 * (e - e0),
                         "max_force": float(np.abs(f).max()),
                         "net_force": float(np.linalg.norm(sliding(f, top, bottom)))})
    return rows


def main_scan(hosts: list[str], teacher: str) -> dict[str, list[dict]]:
    """Print the sliding scan of each host (see the module docstring)."""
    from ase_definet.core.hosts import get_host
    from ase_definet.data.teacher import get_teacher

    calc = get_teacher(teacher)
    out = {}
    print(f"teacher {teacher}; upper half slid against the lower half of each host")
    print(f"{'host':<7}{'atoms':>6}{'slide Å':>9}{'dir':>5}{'dE meV/cell':>13}"
          f"{'max |f| eV/Å':>14}{'net sliding force':>19}")
    for name in hosts:
        host = get_host(name).pristine()
        try:
            out[name] = rows = scan(host, calc)
        except ValueError as err:
            print(f"{name:<7}{len(host):>6}  skipped: {err}")
            continue
        for r in rows:
            print(f"{name:<7}{len(host):>6}{r['slide']:>9.2f}{r['angle']:>5.0f}"
                  f"{r['dE_meV']:>13.2f}{r['max_force']:>14.4f}{r['net_force']:>19.4f}")
    return out


def main(argv: list[str] | None = None) -> list[dict] | dict[str, list[dict]]:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="default", help="weights name or checkpoint")
    p.add_argument("--data", nargs="+", default=["data"], help="ase.db files or folders")
    p.add_argument("--splits", nargs="+", default=["val", "test"])
    p.add_argument("--density", default="high", help="'high', 'low' or 'all'")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--pooled", default=None, metavar="MATERIAL",
                   help="also print MAE / Dummy over all pairs with MATERIAL's sliding "
                        "made exact, and removed (use with --density all)")
    p.add_argument("--scan", nargs="+", default=None, metavar="HOST",
                   help="no model: the teacher's energy along the sliding of these hosts")
    p.add_argument("--teacher", default="chgnet", help="with --scan: the teacher")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if args.scan:
        return main_scan(args.scan, args.teacher)
    model = get_model(args.model)
    pairs = [q for q in load_pairs(args.data) if q.info.get("split") in args.splits
             and args.density in ("all", q.info.get("density"))]
    rows = analyse(model, PairDataset.from_pairs(pairs, model.cutoff, model.max_neighbors))
    if args.pooled:
        r = pooled_ratios(rows, args.pooled)
        print(f"model {args.model}; splits {' '.join(args.splits)}; density {args.density}; "
              f"{len(rows)} pairs; MAE / Dummy over all their atoms: {r['model']:.3f}; with "
              f"the teacher's sliding in the {args.pooled} pairs {r['exact_slide']:.3f}; "
              f"with the model's sliding taken out of them {r['no_slide']:.3f}")
    rows_slid = [r for r in rows if not r["flat"]]
    print(f"model {args.model}; splits {' '.join(args.splits)}; density {args.density}; "
          "sliding |s| in Å (median over pairs), MAE in Å (mean over pairs)")
    print(f"{'material':<9}{'pairs':>6}{'|s| teacher':>12}{'>0.05':>7}{'>0.1':>6}"
          f"{'|s| model':>10}{'s error':>9}{'MAE':>8}{'MAE exact s':>12}{'Dummy':>8}"
          f"{'F_s start':>10}{'cos(s,F_s)':>11}")
    align = start_force_alignment(pairs)
    for mat in sorted({r["material"] for r in rows_slid}):
        rs = [r for r in rows_slid if r["material"] == mat]
        med = {k: statistics.median(r[k] for r in rs)
               for k in ("slide_true", "slide_pred", "slide_err")}
        mean = {k: statistics.fmean(r[k] for r in rs)
                for k in ("mae", "mae_exact_slide", "dummy")}
        over = [100 * statistics.fmean(r["slide_true"] > t for r in rs) for t in (0.05, 0.1)]
        print(f"{mat:<9}{len(rs):>6}{med['slide_true']:>12.3f}{over[0]:>6.0f}%{over[1]:>5.0f}%"
              f"{med['slide_pred']:>10.3f}{med['slide_err']:>9.3f}{mean['mae']:>8.3f}"
              f"{mean['mae_exact_slide']:>12.3f}{mean['dummy']:>8.3f}"
              f"{align.get(mat, {}).get('force', np.nan):>10.4f}"
              f"{align.get(mat, {}).get('cos_big', np.nan):>11.2f}")
    return rows


if __name__ == "__main__":
    main()
