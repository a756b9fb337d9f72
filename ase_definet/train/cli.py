"""``definet train``, ``definet finetune`` and ``definet evaluate``: a thin layer.

The training flags come from :class:`~ase_definet.train.trainer.TrainConfig`'s fields
(:func:`add_setting_flag`), the fine-tuning surgery from :mod:`.finetune`.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import types
import typing
from pathlib import Path
from typing import Any

import torch

from .dataset import FORMATS, PairDataset, detect_format, load_dataset, load_pairs
from .trainer import TrainConfig

logger = logging.getLogger(__name__)


def _add_data_args(p: argparse.ArgumentParser) -> None:
    add_setting_flag(p, "data")
    p.add_argument("--pristine", nargs="+", metavar="HOST",
                   help="pristine host(s) of runs and extxyz pairs: one file, or one per "
                   "material (each run takes the first host its cell and sites match)")
    p.add_argument("--format", dest="fmt", default="auto", choices=list(FORMATS),
                   help="auto: .db -> db; with --pristine, .extxyz/.xyz files -> extxyz "
                   "(alternating pairs), anything else -> runs; runs also reads extxyz "
                   "files as one run each")
    p.add_argument("--fmax", type=float, metavar="EV_PER_A",
                   help="for runs whose files state no convergence criterion (trajectories): "
                   "skip those whose last forces exceed this")
    p.add_argument("--material", help="only pairs of this material")
    add_setting_flag(p, "cache_dir")


# TrainConfig fields that are flags of `definet train` and `definet finetune`, in the
# order of --help (--val-fraction goes before `description`); `data` and `cache_dir` are
# among the data options (of `evaluate` and `card` too), `init_from` is `finetune --from`
TRAIN_FLAGS = ("out", "epochs", "batch_size", "lr", "weight_decay", "lr_factor",
               "lr_patience", "schedule", "min_lr", "clip_grad", "ema_decay", "early_stop",
               "input_noise", "train_stage", "material_weights", "distill_from",
               "distill_weight", "seed", "device", "threads", "max_hours", "compile",
               "description")
DATA_FLAGS = ("data", "cache_dir")
# TrainConfig fields with no flag of their own (`model`: --hidden, --layers, ...)
NOT_FLAGS = ("model", "init_from", "train_split", "val_split", "deterministic")
# flag values turned into setting values
_CONVERT = {"material_weights": lambda items: parse_weights(items)}


def flag_name(setting: str) -> str:
    """``batch_size`` -> ``--batch-size``."""
    return "--" + setting.replace("_", "-")


def add_setting_flag(p: argparse.ArgumentParser, name: str) -> argparse.Action:
    """The flag of the :class:`TrainConfig` field ``name``: its type from the field's
    annotation (``X | None`` as ``X``; a bool is ``store_true``; lists and dicts take one
    or more items), its help, ``metavar`` and ``choices`` from the field's metadata. The
    default is ``None`` so that a ``--config`` file or a resumed run can set it (the
    help shows the field's default, see ``ase_definet.cli``)."""
    f = {f.name: f for f in dataclasses.fields(TrainConfig)}[name]
    kind = typing.get_type_hints(TrainConfig)[name]
    if typing.get_origin(kind) in (types.UnionType, typing.Union):
        kind = next(a for a in typing.get_args(kind) if a is not type(None))
    kw: dict[str, Any] = {"dest": name, "default": None, "help": f.metadata.get("help")}
    kw.update({k: f.metadata[k] for k in ("metavar", "choices") if k in f.metadata})
    if kind is bool:
        kw["action"] = "store_true"
    elif typing.get_origin(kind) in (list, dict):
        kw["nargs"] = "+"
    else:
        kw["type"] = kind
    if "choices" in kw:
        kw["choices"] = list(kw["choices"])
    return p.add_argument(flag_name(name), **kw)


def settings_given(args: argparse.Namespace) -> dict[str, Any]:
    """The :class:`TrainConfig` settings given as flags (those not given are left out)."""
    out = {}
    for name in TRAIN_FLAGS + DATA_FLAGS:
        value = getattr(args, name, None)
        if value is not None:
            out[name] = _CONVERT.get(name, lambda v: v)(value)
    return out


def _add_train_args(p: argparse.ArgumentParser) -> None:
    _add_data_args(p)
    p.add_argument("--config", help="JSON or TOML file of training settings")
    for name in TRAIN_FLAGS[:-1]:
        add_setting_flag(p, name)
    p.add_argument("--val-fraction", type=float, default=0.1,
                   help="validation share when the pairs carry no split")
    add_setting_flag(p, "description")
    p.add_argument("--hidden", type=int,
                   help="model hyperparameter (feature width F); fine-tuning may grow it "
                        "by an integer factor, which keeps the checkpoint's output")
    for name in ("layers", "max-neighbors", "n-rbf"):
        p.add_argument(f"--{name}", type=int, help="model hyperparameter")
    p.add_argument("--cutoff", type=float, help="model graph cutoff, Å")
    p.add_argument("--axial-global", action="store_true", default=None,
                   help="add the axial global channel (an extension beyond the paper, see "
                   "DefiNetConfig); fine-tuning may switch it on for a checkpoint without it")


def add_commands(sub) -> None:
    t = sub.add_parser("train", help="train DefiNet on (unrelaxed, relaxed) pairs")
    _add_train_args(t)
    t.set_defaults(func=cmd_train)
    f = sub.add_parser("finetune", help="fine-tune a checkpoint on new pairs")
    f.add_argument("--from", dest="init_from", default="default",
                   help="weights name or checkpoint to start from")
    f.add_argument("--add-stage", action="store_true",
                   help="append a refinement stage that starts from the checkpoint's "
                        "prediction, initialised as a copy of its last stage "
                        "(DefiNetConfig.refine); unless --train-stage says otherwise, only "
                        "the new stage is trained, on the frozen stages' predictions")
    f.add_argument("--keep-stages", type=int, default=None, metavar="K",
                   help="keep only the first K stages of the checkpoint (what it computes "
                   "with stages=K) and fine-tune those, e.g. 1 for a faster one-stage "
                   "model; with --add-stage, the new stage goes on top of them")
    f.add_argument("--refine-layers", type=int, default=None, metavar="K",
                   help="cut every refinement stage to its first K layers (a cheaper "
                   "refinement: one layer costs about a quarter of four); after "
                   "--keep-stages and --add-stage")
    _add_train_args(f)
    f.set_defaults(func=cmd_train)
    e = sub.add_parser("evaluate", help="coordinate MAE, A3-A6 and the Dummy baseline")
    e.add_argument("--model", default="default", help="weights name or checkpoint")
    _add_data_args(e)
    e.add_argument("--split", default="test", help="split to evaluate ('all' for every pair)")
    e.add_argument("--cold", action="store_true",
                   help="only pairs relaxed from the unrelaxed structure, none warm-started "
                   "from a model's prediction (an unbiased test of that model)")
    e.add_argument("--out-dir", default=None, help="also write the table as CSV and a "
                   "parity plot as PNG into this folder (default: print the table only)")
    e.add_argument("--name", default="evaluation", help="file name stem of the CSV/PNG")
    e.add_argument("--device")
    e.add_argument("--batch-size", type=int, default=16)
    e.add_argument("--stages", type=int, default=None,
                   help="score the prediction after the first this many stages (default all)")
    e.set_defaults(func=cmd_evaluate)
    c = sub.add_parser("card", help="(re)write a checkpoint's model card with test metrics")
    c.add_argument("checkpoint", help="a .safetensors checkpoint")
    _add_data_args(c)
    c.add_argument("--notes", help="Markdown file whose text goes under 'Notes'")
    c.set_defaults(func=cmd_card)
    from .calibrate import add_command as add_calibrate

    add_calibrate(sub)


def build_datasets(data: list[str], cutoff: float, max_neighbors: int | None, *,
                   pristine: str | list[str] | None = None, fmt: str = "auto",
                   material: str | None = None, cache_dir: str | None = None, seed: int = 0,
                   val_fraction: float = 0.1, fmax: float | None = None
                   ) -> tuple[PairDataset, PairDataset, PairDataset]:
    """(train, val, test) datasets; pairs without a split are split at random by ``seed``."""
    if pristine is not None and not isinstance(pristine, (str, Path)) and len(pristine) == 1:
        pristine = pristine[0]
    if (fmt if fmt != "auto" else detect_format(data, pristine)) == "db":
        full = load_dataset(data, cutoff, max_neighbors, cache_dir)
    else:
        pairs = load_pairs(data, pristine=pristine, fmt=fmt, fmax=fmax)
        full = PairDataset.from_pairs(pairs, cutoff, max_neighbors)
    if material:
        full = full.subset(material=material)
    if len(full) == 0:
        raise ValueError(f"no pairs found in {data}"
                         + (f" for material {material}" if material else ""))
    if all(s.info.get("split") in ("train", "val", "test") for s in full.samples):
        return full.subset(split="train"), full.subset(split="val"), full.subset(split="test")
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(full), generator=g).tolist()
    n_val = max(1, round(val_fraction * len(full))) if val_fraction > 0 else 0
    val = PairDataset([full[i] for i in order[:n_val]])
    train = PairDataset([full[i] for i in order[n_val:]])
    logger.info("pairs carry no split: %d train, %d val (seed %d)", len(train), len(val), seed)
    return train, val, PairDataset([])


def parse_weights(items: list[str]) -> dict[str, float]:
    """``["hBN=3", "BP=0.5"]`` -> ``{"hBN": 3.0, "BP": 0.5}`` (a clear error otherwise)."""
    out: dict[str, float] = {}
    for item in items:
        name, sep, value = item.partition("=")
        try:
            weight = float(value)
        except ValueError:
            weight = None
        if not (sep and name) or weight is None:
            raise ValueError(f"--material-weights takes MATERIAL=WEIGHT items, got {item!r}")
        out[name] = weight
    return out


def cmd_train(args: argparse.Namespace) -> int:
    from ..core.checkpoint import get_model
    from ..model import DefiNetConfig
    from .card import write_model_card
    from .finetune import (
        check_finetune_changes,
        finetune_metadata,
        finetune_train_stage,
        prepare_finetune,
    )
    from .trainer import Trainer, read_settings, set_up_torch, with_saved_settings

    overrides = settings_given(args)
    init_from = getattr(args, "init_from", None)
    if init_from:
        overrides["init_from"] = init_from
    cfg = (TrainConfig.from_file(args.config, **overrides) if args.config
           else TrainConfig(**overrides))
    # a resume takes the saved run's settings for those not given (conflicts are refused)
    given = set(overrides) | (set(read_settings(args.config)) if args.config else set())
    cfg = with_saved_settings(cfg, given)
    model_over = {k: getattr(args, k) for k in ("hidden", "layers", "max_neighbors", "n_rbf",
                                                "cutoff", "axial_global")
                  if getattr(args, k) is not None}
    cfg.model = {**cfg.model, **model_over}
    model, finetune_meta = None, {}
    if cfg.init_from:
        check_finetune_changes(model_over)
        base = get_model(cfg.init_from, "cpu")
        add_stage = bool(getattr(args, "add_stage", False))
        surgery = {k: getattr(args, k, None) for k in ("keep_stages", "refine_layers")}
        model = prepare_finetune(base, **model_over, add_stage=add_stage, **surgery,
                                 seed=cfg.seed, name=str(cfg.init_from))
        cfg.train_stage = finetune_train_stage(cfg.train_stage, add_stage)
        finetune_meta = finetune_metadata(base, model, cfg.init_from, **surgery)
        # record the architecture actually trained (the config file's `model` is unused)
        cfg.model = {k: v for k, v in model.config.to_dict().items() if k != "elements"}
        cutoff, max_nb = model.cutoff, model.max_neighbors
    else:
        probe = DefiNetConfig(**cfg.model)
        cutoff, max_nb = probe.cutoff, probe.max_neighbors
    train, val, test = build_datasets(cfg.data, cutoff, max_nb, pristine=args.pristine,
                                      fmt=args.fmt, material=args.material,
                                      cache_dir=cfg.cache_dir, seed=cfg.seed,
                                      val_fraction=args.val_fraction, fmax=args.fmax)
    logger.info("pairs: %d train, %d val, %d test", len(train), len(val), len(test))
    files = []
    if (args.fmt if args.fmt != "auto" else detect_format(cfg.data, args.pristine)) == "db":
        from .dataset import expand_paths

        files = [p.name for p in expand_paths(cfg.data)]
    else:  # runs and extxyz pairs: the files the pairs came from
        files = sorted({str(s.info["source"]) for s in train.samples + val.samples
                        if "source" in s.info})
        if len(files) > 100:  # keep the checkpoint's metadata small
            files = files[:100] + [f"... and {len(files) - 100} more"]
    meta = {"data": {"sources": [str(d) for d in cfg.data], "files": files,
                     "description": cfg.description, "n_train": len(train),
                     "n_val": len(val), "n_test": len(test),
                     "teachers": sorted({str(s.info.get("teacher", "unknown"))
                                         for s in train.samples})}}
    meta.update(finetune_meta)
    set_up_torch(cfg)  # threads, deterministic mode, seed: the entry point's to set
    trainer = Trainer(cfg, train, val, model=model, metadata=meta)
    trainer.try_resume()
    result = trainer.fit()
    if trainer.rank == 0 and (Path(cfg.out) / "best.safetensors").exists():
        write_model_card(Path(cfg.out) / "best.safetensors", test_set=test or None,
                         device=trainer.device)
    start = result.get("start_val_mae")
    logger.info("best validation MAE %.4f Å after %d epochs%s; weights in %s",
                result["best_val_mae"], result["epochs"],
                f" (the starting checkpoint's: {start:.4f} Å)" if cfg.init_from and start
                is not None else "", Path(cfg.out) / "best.safetensors")
    return 0


def cmd_card(args: argparse.Namespace) -> int:
    from ..core.checkpoint import read_metadata
    from .card import write_model_card

    cfg, _ = read_metadata(args.checkpoint)
    test = None
    if args.data:
        train, val, test = build_datasets(args.data, cfg.cutoff, cfg.max_neighbors,
                                          pristine=args.pristine, fmt=args.fmt,
                                          material=args.material, cache_dir=args.cache_dir,
                                          fmax=args.fmax)
        if len(test) == 0:  # pairs without a split: evaluate on all of them
            test = PairDataset(train.samples + val.samples)
    notes = Path(args.notes).read_text() if args.notes else ""
    card = write_model_card(Path(args.checkpoint), test_set=test, notes=notes)
    print(f"wrote {card}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from ..core.checkpoint import get_model, weights_label
    from .evaluate import cold_only, evaluate_model, format_table, plot_parity, write_csv

    model = get_model(args.model, args.device)
    train, val, test = build_datasets(args.data or ["data"], model.cutoff,
                                      model.max_neighbors, pristine=args.pristine,
                                      fmt=args.fmt, material=args.material,
                                      cache_dir=args.cache_dir, val_fraction=0.0,
                                      fmax=args.fmax)
    sets = {"train": train, "val": val, "test": test,
            "all": PairDataset(train.samples + val.samples + test.samples)}
    if args.split not in sets:
        raise ValueError(f"unknown split {args.split!r}; choose from {sorted(sets)}")
    if args.split == "test" and not len(val) and not len(test):
        logger.info("the pairs carry no split: evaluating all %d of them", len(train))
        args.split = "all"
    ds = sets[args.split]
    if args.cold:
        ds = cold_only(ds)
    if len(ds) == 0:
        raise ValueError(f"no pairs in split {args.split!r}")
    dev = next(model.parameters()).device
    acc, arrays = evaluate_model(model, ds, args.batch_size, dev, progress=True, collect=True,
                                 stages=args.stages)
    ran = "" if args.stages is None else f", first {args.stages} stage(s)"
    print(f"coordinate MAE [Å] of {args.model} ({weights_label(args.model)}){ran} "
          f"on {len(ds)} pairs ({args.split}); "
          "'dummy' = the unrelaxed input")
    print(format_table(acc))
    if args.out_dir is None:
        return 0
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_csv(acc, out / f"{args.name}.csv")
    plot_parity(arrays, out / f"{args.name}.png", title=f"{args.model} on {args.split}")
    print(f"wrote {out / (args.name + '.csv')} and {out / (args.name + '.png')}")
    return 0
