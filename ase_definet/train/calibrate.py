"""Calibrate a checkpoint's uncertainty and record its training domain; measure both.

    definet calibrate default --data 'data/*_00[0-5].db' -o calibrated.safetensors

fits, on the ``val`` split, one :class:`~ase_definet.core.uncertainty.Calibration` per number
of stages run, records the :class:`~ase_definet.core.domain.Domain` of the ``train`` split
(element-pair distances, defect kinds), and writes both into the checkpoint's metadata
(tensors unchanged). :func:`uncertainty_report` measures a calibration on other pairs.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from contextlib import closing
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np
import torch
from ase import Atoms
from tqdm import tqdm

from ..core.domain import Domain, defect_kinds
from ..core.predict import iter_layer_outputs
from ..core.uncertainty import Calibration, fit_calibration, predicted_shift, stage_spread
from ..data.store import Pair
from ..model import DefiNet
from .dataset import PairDataset, iter_batches

logger = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass
class StructureRecord:
    """Per-atom spreads, predicted shifts and errors (Å) of one structure, for every
    number of stages."""

    info: dict[str, Any]
    spread: dict[int, np.ndarray] = field(default_factory=dict)  # stages -> (n_atoms,)
    shift: dict[int, np.ndarray] = field(default_factory=dict)  # stages -> (n_atoms,)
    error: dict[int, np.ndarray] = field(default_factory=dict)  # stages -> (n_atoms,)
    dummy: np.ndarray | None = None  # (n_atoms,) error of the unrelaxed input


def collect(model: DefiNet, dataset: PairDataset, batch_size: int = 8,
            progress: bool = True) -> list[StructureRecord]:
    """One forward pass per batch; the spreads and errors of every stage count are read
    off the layer outputs (stage s's prediction is ``model.stage_ends()[s - 1]``)."""
    ends = model.stage_ends()
    records: list[StructureRecord] = []
    k = 0
    batches = tqdm(iter_batches(dataset, batch_size, shuffle=False),
                   total=-(-len(dataset) // batch_size), desc="calibration", unit="batch",
                   disable=not progress)
    with closing(iter_layer_outputs(model, batches)) as outputs:
        for batch, out in outputs:
            layers = torch.stack(out.layers).double().cpu().numpy()
            target = batch.target.double().numpy()
            for info, sl in zip(batch.infos, out.slices):
                m = dataset[k].mask
                k += 1
                rec = StructureRecord(info=dict(info))
                rec.dummy = np.linalg.norm(layers[0, sl][m] - target[sl][m], axis=1)
                for s in range(1, len(ends) + 1):
                    run = layers[: ends[s - 1] + 1, sl]
                    rec.spread[s] = stage_spread(run, ends[:s])[m]
                    rec.shift[s] = predicted_shift(run)[m]
                    rec.error[s] = np.linalg.norm(run[-1][m] - target[sl][m], axis=1)
                records.append(rec)
    return records


def fit_all(records: list[StructureRecord]) -> dict[int, Calibration]:
    """One calibration per number of stages, on the records' atoms."""
    out = {}
    for s in records[0].spread:
        out[s] = fit_calibration([r.spread[s] for r in records],
                                 [r.error[s] for r in records],
                                 shifts=[r.shift[s] for r in records])
    return out


def training_domain(pairs: Iterable[Pair]) -> Domain:
    """The :class:`Domain` of training pairs (each distinct host measured once)."""
    dom = Domain()
    seen: set[tuple] = set()
    for p in pairs:
        key = (p.pristine.numbers.tobytes(), np.round(p.pristine.cell[:], 4).tobytes())
        if key not in seen:
            seen.add(key)
            dom.add_host(Atoms(numbers=p.pristine.numbers, positions=p.pristine.positions,
                               cell=p.pristine.cell, pbc=p.pristine.pbc))
        dom.defect_kinds |= defect_kinds(p.pristine.numbers, p.spec.vacancies,
                                         p.spec.substitutions)
    return dom


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(a, b)[0]) if len(a) > 2 else float("nan")


def size_class(info: dict[str, Any]) -> str | None:
    """The supercell-size class of a pair from its ``supercell`` record ("7x9"): by the
    number of unit cells, ``<=36`` (up to 6x6), ``37-64`` (up to 8x8) or ``>64``;
    None for pairs that do not record it."""
    sc = info.get("supercell")
    if not sc:
        return None
    nx, ny = (int(v) for v in str(sc).split("x")[:2])
    return "<=36" if nx * ny <= 36 else ("37-64" if nx * ny <= 64 else ">64")


def group_by(items: Iterable[T], info: Callable[[T], dict[str, Any]],
             group_keys: tuple[str, ...],
             defaults: Mapping[str, str] | None = None) -> dict[str, list[T]]:
    """``{"overall": all items, "key=value": the items of that value, ...}`` for every
    key of ``group_keys`` in each item's ``info`` (``cells`` is :func:`size_class`);
    items without a key go to ``defaults[key]`` if given, else to no group of it."""
    items = list(items)
    groups: dict[str, list[T]] = {"overall": items}
    for key in group_keys:
        for item in items:
            d = info(item)
            value = size_class(d) if key == "cells" else d.get(key)
            value = (defaults or {}).get(key) if value is None else value
            if value is not None:
                groups.setdefault(f"{key}={value}", []).append(item)
    return groups


def trust_metrics(uncertainty: list[np.ndarray], bound90: list[np.ndarray],
                  error: list[np.ndarray]) -> dict[str, Any]:
    """How well per-atom uncertainties (Å, one (n_atoms,) array per structure) rank and
    bound the actual errors: Spearman per atom and between per-structure means, the
    fraction of atoms below the 90 % bound; atoms and structures counted."""
    u, e = np.concatenate(uncertainty), np.concatenate(error)
    return {"structures": len(error), "atoms": len(e), "atom_spearman": _spearman(u, e),
            "structure_spearman": _spearman(np.array([x.mean() for x in uncertainty]),
                                            np.array([x.mean() for x in error])),
            "below_bound90": float((e <= np.concatenate(bound90)).mean())}


def uncertainty_report(records: list[StructureRecord], cal: Calibration, stages: int,
                       group_keys: tuple[str, ...] = ("material", "density", "axis", "cells")
                       ) -> list[dict[str, Any]]:
    """Per group of :func:`group_by`: :func:`trust_metrics`, and the structures whose
    mean uncertainty exceeds the calibration's threshold (``flagged``)."""
    rows = []
    for name, recs in group_by(records, lambda r: r.info, group_keys).items():
        u = [cal.expected_error(r.spread[stages], r.shift[stages]) for r in recs]
        rows.append({"group": name, **trust_metrics(
                         u, [cal.bound90(r.spread[stages], r.shift[stages]) for r in recs],
                         [r.error[stages] for r in recs]),
                     "flagged": int(sum(x.mean() > cal.structure_threshold for x in u))})
    return rows


def format_report(rows: list[dict[str, Any]], last: str = "flagged") -> str:
    """The rows of :func:`uncertainty_report` as a table; ``last`` names the count in its
    last column."""
    w = max(7, len(last))
    head = (f"{'group':24s} {'structs':>7s} {'atoms':>7s} {'rho_atom':>8s} "
            f"{'rho_struct':>10s} {'<bound90':>8s} {last:>{w}s}")
    lines = [head]
    for r in rows:
        lines.append(f"{r['group']:24s} {r['structures']:7d} {r['atoms']:7d} "
                     f"{r['atom_spearman']:8.3f} {r['structure_spearman']:10.3f} "
                     f"{r['below_bound90']:8.3f} {r[last]:{w}d}")
    return "\n".join(lines)


def calibrate_checkpoint(weights: str, data: list[str], out: str, split: str = "val",
                         train_split: str = "train", batch_size: int = 8,
                         progress: bool = True, domain_data: list[str] | None = None,
                         weights_version: str | None = None, description: str | None = None
                         ) -> tuple[dict[int, Calibration], Domain]:
    """Fit the calibrations on ``split`` of ``data`` and the domain on ``train_split`` of
    ``domain_data`` (default ``data``: it must be what the weights were trained on), and
    write the checkpoint ``weights`` with both in its metadata to ``out`` (atomically;
    ``out`` may be the input file; the tensors are unchanged). ``weights_version`` and
    ``description`` (of the training data), when given, are recorded too (for shipped
    weights: ``definet info`` shows both)."""
    from ..core.checkpoint import load_checkpoint, save_checkpoint
    from ..data.store import iter_pairs
    from .dataset import expand_paths

    model, meta = load_checkpoint(weights)
    files = expand_paths(data)
    held = PairDataset.from_pairs(iter_pairs(files, split=split), model.cutoff,
                                  model.max_neighbors, progress)
    if len(held) < 5:
        raise ValueError(f"only {len(held)} pair(s) in the {split!r} split of {data}: too "
                         "few to calibrate on (need 5 or more)")
    cals = fit_all(collect(model, held, batch_size, progress))
    domain_data = data if domain_data is None else domain_data
    dom = training_domain(iter_pairs(expand_paths(domain_data), split=train_split))
    if not dom.distances:
        raise ValueError(f"no pairs in the {train_split!r} split of {domain_data} to take "
                         "the training domain from")
    meta = {**meta, "uncertainty": {str(s): c.to_dict() for s, c in cals.items()},
            "domain": dom.to_dict()}
    if weights_version:
        meta["weights_version"] = weights_version
    if description:
        meta["data"] = {**meta.get("data", {}), "description": description}
    save_checkpoint(model, out, meta)
    return cals, dom


def add_command(sub) -> None:
    """``definet calibrate``."""
    c = sub.add_parser("calibrate", help="fit a checkpoint's uncertainty calibration and "
                       "record its training domain (for the out-of-range warnings)")
    c.add_argument("weights", help="weights name or .safetensors path")
    c.add_argument("--data", nargs="+", required=True,
                   help="ase.db pair files; quote globs (the package expands them)")
    c.add_argument("--split", default="val", help="split the calibration is fitted on "
                   "(default: %(default)s)")
    c.add_argument("--train-split", default="train", help="split whose hosts and defect "
                   "kinds are the training domain (default: %(default)s)")
    c.add_argument("--domain-data", nargs="+", default=None,
                   help="pair files the weights were trained on, for the domain (default: "
                   "--data; give it when --data holds pairs of other kinds for the fit)")
    c.add_argument("-o", "--out", required=True,
                   help="output .safetensors (the input path updates it in place)")
    c.add_argument("--batch-size", type=int, default=8, help="default: %(default)s")
    c.add_argument("--weights-version", default=None,
                   help="record this version name (shipped weights, e.g. v17)")
    c.add_argument("--description", default=None,
                   help="record this description of the training data")
    c.set_defaults(func=cmd_calibrate)


def cmd_calibrate(args) -> int:
    cals, dom = calibrate_checkpoint(args.weights, args.data, args.out, args.split,
                                     args.train_split, args.batch_size,
                                     domain_data=args.domain_data,
                                     weights_version=args.weights_version,
                                     description=args.description)
    for s, c in sorted(cals.items()):
        print(f"stages={s}: {c.n_atoms} atoms, expected error {c.mean[0]:.4f}-"
              f"{c.mean[-1]:.4f} Å, structure threshold {c.structure_threshold:.4f} Å, "
              f"score {c.formula()} (atoms clipped to {c.size_range[0]}-"
              f"{c.size_range[1]})")
    print(f"domain: {len(dom.distances)} element pairs, defect kinds "
          f"{', '.join(sorted(dom.defect_kinds))}")
    print(f"wrote {args.out}")
    return 0
