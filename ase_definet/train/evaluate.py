"""Evaluate a checkpoint on pairs: MAE, A3-A6, the Dummy baseline, per material and
density; a table, a CSV and a parity / displacement-error plot."""

from __future__ import annotations

import argparse
import csv
import logging
from contextlib import closing
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ..core.fileio import atomic_path, atomic_write
from ..core.predict import iter_layer_outputs
from ..data.store import is_cold
from ..model import DefiNet
from .dataset import PairDataset, iter_batches
from .metrics import RADII, ErrorAccumulator, sample_groups

logger = logging.getLogger(__name__)

REGIONS = ["all"] + [f"A{int(r)}" for r in RADII]


def evaluate_model(model: DefiNet, dataset: PairDataset, batch_size: int = 16,
                   device: torch.device | str | None = None, progress: bool = False,
                   collect: bool = False, stages: int | None = None
                   ) -> tuple[ErrorAccumulator, dict[str, np.ndarray]]:
    """Per-atom errors of ``model`` (regions ``all``, ``A3``..) and of the Dummy baseline
    (``dummy_all``, ``dummy_A3``..) over the atoms (not vacancies) of ``dataset``;
    ``stages`` scores the prediction after the first this many stages (default all).

    With ``collect``, also returns the arrays needed for plots: true and predicted
    displacements (n, 3) Å and the distance of each atom to the nearest defect.
    ``device`` defaults to the model's own (``get_model`` puts it on the GPU when present).
    The forward passes run through :func:`~ase_definet.core.predict.iter_layer_outputs`.
    """
    acc = ErrorAccumulator()
    keep: dict[str, list] = {"true": [], "pred": [], "near": []}
    batches = tqdm(iter_batches(dataset, batch_size, shuffle=False), disable=not progress,
                   total=-(-len(dataset) // batch_size), desc="evaluating", unit="batch")
    k = 0
    with closing(iter_layer_outputs(model, batches, device=device, stages=stages)) as outputs:
        for batch, out in outputs:
            pred = out.layers[-1].double().cpu().numpy()
            start = batch.graph.positions.double().numpy()
            target = batch.target.double().numpy()
            for info, sl in zip(batch.infos, out.slices):
                sample = dataset[k]
                k += 1
                m = sample.mask
                near = sample.near_defect()[m]
                err = np.linalg.norm(pred[sl][m] - target[sl][m], axis=1)
                dummy = np.linalg.norm(start[sl][m] - target[sl][m], axis=1)
                groups = sample_groups(info)
                acc.add(groups, err, near)
                acc.add(groups, dummy, near, prefix="dummy_")
                acc.add_structure(groups, float(err.mean()), float(dummy.mean()),
                                  name=pair_name(info, k - 1))
                if collect:
                    keep["true"].append(target[sl][m] - start[sl][m])
                    keep["pred"].append(pred[sl][m] - start[sl][m])
                    keep["near"].append(near)
    empty = {"true": (0, 3), "pred": (0, 3), "near": (0,)}
    arrays = {key: np.concatenate(v) if v else np.zeros(empty[key]) for key, v in keep.items()}
    return acc, arrays


def pair_name(info: dict, index: int) -> str:
    """How a report names a pair: its ``config_id`` (else its index in the dataset), with
    the lattice axis and the supercell where recorded, e.g. ``hBN-low-00030 (pbe, 8x8)``."""
    where = ", ".join(str(info[k]) for k in ("axis", "supercell") if info.get(k))
    return str(info.get("config_id", f"pair {index}")) + (f" ({where})" if where else "")


def cold_only(dataset: PairDataset) -> PairDataset:
    """The pairs whose teacher relaxation started from the unrelaxed structure (pairs
    without a ``label_start`` record were all made so); a model evaluated on pairs
    warm-started from its own prediction would look better than it is."""
    return PairDataset([s for s in dataset.samples
                        if is_cold(s.info)])


def format_table(acc: ErrorAccumulator, max_listed: int = 20) -> str:
    """Text table: per group, model MAE and Dummy MAE (Å) for all atoms and A3-A6; below
    it, the (at most ``max_listed``) structures predicted worse than their input."""
    head = (f"{'group':<20}{'n_atoms':>8}" + "".join(f"{r:>9}{'dummy':>8}" for r in REGIONS)
            + f"{'ratio':>7}{'A3 rat':>7}{'structs':>8}{'worse':>6}")
    lines = [head, "-" * len(head)]
    for g in acc.groups():
        cells = "".join(f"{acc.mae(g, r):9.4f}{acc.mae(g, 'dummy_' + r):8.4f}" for r in REGIONS)
        ratio = acc.mae(g, "all") / acc.mae(g, "dummy_all")
        ratio3 = acc.mae(g, "A3") / acc.mae(g, "dummy_A3")
        lines.append(f"{g:<20}{acc.counts[(g, 'all')]:>8}{cells}{ratio:7.3f}{ratio3:7.3f}"
                     f"{acc.structures[g]:8d}{acc.worse[g]:6d}")
    lines.append("ratio: MAE / Dummy MAE (all atoms, A3); worse: structures predicted further "
                 "from the relaxed one than their unrelaxed input")
    worst = sorted(acc.worse_structures, key=lambda w: w[1] - w[2], reverse=True)
    lines += [f"worse than input: {name}  MAE {mae:.4f} Å, Dummy {dummy:.4f} Å"
              for name, mae, dummy in worst[:max_listed]]
    if len(worst) > max_listed:
        lines.append(f"worse than input: {len(worst) - max_listed} more")
    return "\n".join(lines)


def write_csv(acc: ErrorAccumulator, path: str | Path) -> None:
    cols = REGIONS + [f"dummy_{r}" for r in REGIONS]
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["group", "n_atoms"] + [f"mae_{c}" for c in cols]
                   + ["n_structures", "n_worse_than_input"])
        for g in acc.groups():
            w.writerow([g, acc.counts[(g, "all")]] + [f"{acc.mae(g, c):.6f}" for c in cols]
                       + [acc.structures[g], acc.worse[g]])


def plot_parity(arrays: dict[str, np.ndarray], path: str | Path, title: str = "") -> None:
    """Parity of predicted vs true displacement components, and |error| vs distance to
    the nearest defect, saved as PNG."""
    from matplotlib.figure import Figure  # no pyplot: the caller's backend is left alone

    true, pred, near = arrays["true"], arrays["pred"], arrays["near"]
    fig = Figure(figsize=(10, 4.4))
    a, b = fig.subplots(1, 2)
    lim = float(max(np.abs(true).max(initial=0.1), np.abs(pred).max(initial=0.1))) * 1.05
    for c, name in enumerate("xyz"):
        a.scatter(true[:, c], pred[:, c], s=3, alpha=0.4, label=name)
    a.plot([-lim, lim], [-lim, lim], "k--", lw=0.8)
    a.set(xlim=(-lim, lim), ylim=(-lim, lim), xlabel="teacher displacement [Å]",
          ylabel="DefiNet displacement [Å]", title="parity (per component)")
    a.legend(markerscale=4)
    err = np.linalg.norm(pred - true, axis=1)
    dummy = np.linalg.norm(true, axis=1)
    finite = np.isfinite(near)
    b.scatter(near[finite], dummy[finite], s=3, alpha=0.3, c="0.6", label="Dummy (input)")
    b.scatter(near[finite], err[finite], s=3, alpha=0.4, c="C3", label="DefiNet")
    b.set(xlabel="distance to nearest defect [Å]", ylabel="|position error| [Å]",
          title="displacement error")
    b.legend(markerscale=4)
    fig.suptitle(title)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=130))


def evaluate_split_from_cli(description: str, argv: list[str] | None, split: str = "val"
                            ) -> tuple[argparse.Namespace, DefiNet, PairDataset,
                                       dict[str, np.ndarray]]:
    """The common start of the analysis scripts in ``benchmarks/``: parse ``--model
    --data --split --threads`` from ``argv``, load the model and the graphs of the chosen
    split, and evaluate. Returns the parsed arguments, the model, the dataset and the
    arrays of :func:`evaluate_model` (``collect=True``)."""
    from ..core.checkpoint import get_model
    from .dataset import load_pairs

    p = argparse.ArgumentParser(description=description,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--split", default=split, help="which split of the pairs to analyse")
    p.add_argument("--model", default="default", help="weights name or checkpoint")
    p.add_argument("--data", nargs="+", default=["data"], help="ase.db files or folders")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(args.threads or torch.get_num_threads())
    model = get_model(args.model)
    pairs = [q for q in load_pairs(args.data) if q.info.get("split") == args.split]
    if not pairs:
        raise ValueError(f"no pairs of split {args.split!r} in {args.data}")
    dataset = PairDataset.from_pairs(pairs, model.cutoff, model.max_neighbors)
    _, arrays = evaluate_model(model, dataset, collect=True)
    return args, model, dataset, arrays
