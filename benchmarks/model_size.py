"""Width and depth against accuracy and CPU time: the model card's size table.

    python benchmarks/model_size.py runs/size_F64_T4 runs/size_F128_T4 --csv sizes.csv

Each argument is a training run folder (``definet train --out``). For each run: width F,
layers T, neighbour cap N, parameter count, epochs trained, training wall time, the best
validation MAE and A3 (EMA weights, from the run's ``log.csv``), the validation Dummy
MAE, and the median forward time of the run's best checkpoint on an 8x8 MoS2 cell with
10 % defects (``--threads`` CPU threads, medians of ``--repeats`` after a warm-up).
Runs compared this way should share their data and their training budget
(``--max-hours``); the table says what each got.
"""

from __future__ import annotations

import argparse
import csv
import logging
import sys
from pathlib import Path

import torch

from ase_definet import DefectStructure, load_checkpoint
from ase_definet.graph import collate

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchmark import structure, timed

logger = logging.getLogger("model_size")


def forward_ms(model: torch.nn.Module, repeats: int) -> float:
    """Median forward time (ms) of ``model`` on an 8x8 MoS2 cell with 10 % defects
    (the structure and the timing of ``benchmark.py``)."""
    host, spec = structure(8)
    s = DefectStructure.from_host(host, spec, model.elements)
    batch = collate([s.graph(model.cutoff, model.max_neighbors)])
    with torch.inference_mode():
        return 1e3 * timed(lambda: model(batch), repeats)


def summarise(run: Path, repeats: int) -> dict:
    """One table row for the training run folder ``run``."""
    with open(run / "log.csv") as fh:
        log = list(csv.DictReader(fh))
    if not log:
        raise ValueError(f"{run}/log.csv has no epochs yet")
    best = min(log, key=lambda r: float(r["val_mae"]))
    model, _ = load_checkpoint(run / "best.safetensors", device="cpu")
    cfg = model.config  # the checkpoint's own (a fine-tuning run inherits it)
    return {
        "run": run.name,
        "F": cfg.hidden, "T": cfg.layers, "N": cfg.max_neighbors,
        "params": sum(p.numel() for p in model.parameters()),
        "epochs": len(log), "best_epoch": int(best["epoch"]),
        "train_min": sum(float(r["seconds"]) for r in log) / 60,
        "val_mae": float(best["val_mae"]), "val_a3": float(best["val_a3"]),
        "val_dummy": float(best["val_dummy_mae"]),
        "forward_ms": forward_ms(model, repeats),
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", type=Path, nargs="+", help="training run folders")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--csv", type=Path, default=None)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(args.threads)
    rows = [summarise(run, args.repeats) for run in args.runs]
    head = (f"{'run':<16}{'F':>5}{'T':>3}{'N':>4}{'params':>9}{'epochs':>8}{'best':>6}"
            f"{'train min':>10}{'val MAE':>9}{'val A3':>8}{'Dummy':>8}{'MAE/Dummy':>10}"
            f"{'8x8 fwd ms':>11}")
    print(f"CPU forward times with {args.threads} thread(s); "
          f"{torch.__version__}, python {sys.version.split()[0]}")
    print(head)
    print("-" * len(head))
    for r in rows:
        print(f"{r['run']:<16}{r['F']:>5}{r['T']:>3}{r['N']:>4}{r['params']:>9}"
              f"{r['epochs']:>8}{r['best_epoch']:>6}{r['train_min']:>10.1f}"
              f"{r['val_mae']:>9.4f}{r['val_a3']:>8.4f}{r['val_dummy']:>8.4f}"
              f"{r['val_mae'] / r['val_dummy']:>10.2f}{r['forward_ms']:>11.1f}")
    if args.csv:
        with open(args.csv, "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
        logger.info("wrote %s", args.csv)


if __name__ == "__main__":
    main()
