"""Training and fine-tuning DefiNet (the paper's recipe by default).

AdamW (lr 1e-4), ReduceLROnPlateau (factor 0.8, patience 5) on the validation MAE,
gradient clipping, an exponential moving average (EMA, decay 0.999) of the weights that
is validated and saved, loss = mean distance between predicted and relaxed positions
over atoms (vacancy placeholders excluded), early stopping on the validation MAE.
``schedule="cosine"`` replaces the plateau rule by a cosine decay over a fixed number
of epochs, which suits fixed compute budgets.

Output folder: ``best.safetensors`` (EMA weights of the best epoch, a normal
checkpoint), ``best.md`` (its model card), ``last.pt`` (the full training state, loaded
with ``torch.load(weights_only=True)``; a killed run resumes from it and reaches the
same result), ``log.csv`` (one row per epoch), ``config.json``.

Several GPUs or nodes: ``torchrun --nproc_per_node=4 -m ase_definet.train ...``.
"""

from __future__ import annotations

import copy
import csv
import dataclasses
import hashlib
import json
import logging
import math
import os
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ase.data import chemical_symbols
from torch import nn
from tqdm.auto import tqdm

from ..core.checkpoint import get_model, save_checkpoint, stored_checksum
from ..core.device import resolve_device
from ..core.fileio import atomic_path, atomic_write
from ..model import DefiNet, DefiNetConfig
from .dataset import Batch, PairDataset, iter_batches
from .evaluate import evaluate_model
from .staging import distilled_dataset, staged_dataset

logger = logging.getLogger(__name__)

MIN_VAL_PAIRS = 5  # fewer validation pairs than this: a warning (too few to select on)
PROGRESS_INTERVAL_S = 30.0  # without a terminal (no progress bar): a log line this often


def _meta(help: str, **cli: Any) -> dict[str, Any]:
    """A :class:`TrainConfig` field's metadata: its help text, and any ``metavar`` or
    ``choices`` of its command-line flag (``train/cli.py`` derives the flags from them)."""
    return {"help": help, **cli}


def _setting(default: Any, help: str, **cli: Any) -> Any:
    """A :class:`TrainConfig` field with an immutable default and :func:`_meta` metadata."""
    return field(default=default, metadata=_meta(help, **cli))


@dataclass
class TrainConfig:
    """Every setting of a training run (also readable from a JSON/TOML file).

    Each field's ``metadata["help"]`` says what it does; ``definet train`` and
    ``definet finetune`` take their flags, help and shown defaults from these fields.
    """

    data: list[str] = field(default_factory=lambda: ["data"], metadata=_meta(
        "relaxation runs with --pristine (vasprun.xml, OUTCAR, folders with POSCAR+CONTCAR, "
        "ASE .traj files; folders and quoted globs of them, e.g. 'runs/*/vasprun.xml'), "
        "ase.db files/folders/globs, a 2DMD root, or extxyz files of alternating "
        "(unrelaxed, relaxed) frames with --pristine"))
    out: str = _setting("runs/definet", "output folder (resumes if it holds last.pt)")
    model: dict[str, Any] = field(
        default_factory=lambda: {"hidden": 128, "layers": 4, "max_neighbors": 24},
        metadata=_meta("DefiNetConfig settings of a new model (on the command line: "
                       "--hidden, --layers, ...); fine-tuning records the checkpoint's"))
    init_from: str | None = _setting(None, "weights name or checkpoint to fine-tune "
                                           "(definet finetune --from)")
    epochs: int = _setting(300, "maximum number of epochs")
    batch_size: int = _setting(8, "pairs per optimizer step (and per validation batch)")
    lr: float = _setting(1e-4, "AdamW learning rate")
    weight_decay: float = _setting(0.01, "AdamW weight decay")
    lr_factor: float = _setting(0.8, "plateau schedule: learning-rate factor when the "
                                     "validation MAE stalls")
    lr_patience: int = _setting(5, "plateau schedule: epochs without improvement before "
                                   "the learning rate drops")
    min_lr: float = _setting(1e-6, "lowest learning rate of either schedule")
    # "plateau" (the paper): ReduceLROnPlateau on the validation MAE; "cosine": cosine
    # decay from lr to min_lr over `epochs`, per step (for fixed budgets; early stopping
    # and max_hours still apply)
    schedule: str = _setting(
        "plateau", "learning-rate schedule: plateau (the paper's ReduceLROnPlateau) or "
        "cosine (decay to --min-lr over --epochs, for fixed budgets)",
        choices=("plateau", "cosine"))
    clip_grad: float = _setting(10.0, "gradient-norm clipping threshold")
    material_weights: dict[str, float] = field(default_factory=dict, metadata=_meta(
        "loss weight of each named material's pairs (default 1), e.g. hBN=3: the loss is a "
        "mean distance in Å, so materials whose atoms move little count little otherwise",
        metavar="MATERIAL=W"))
    ema_decay: float = _setting(0.999, "decay of the exponential moving average of the "
                                       "weights (validated and saved)")
    # per Cartesian component; the relaxed target is unchanged (meant to stay well below
    # the relaxation's own displacements, so that the noisy start still belongs to that
    # minimum). Drawn from the run's seeded generator, so resumes stay exact.
    input_noise: float = _setting(
        0.0, "augmentation: Gaussian noise (Å, standard deviation) added to the unrelaxed "
        "input positions of each training batch (0: off)", metavar="SIGMA")
    # the last stage trains alone on the frozen stages' predictions (computed once), and
    # input_noise then perturbs those predictions, its own input.
    train_stage: int | None = _setting(
        None, "with refinement stages (see --add-stage): train only this stage (0 the "
        "first, -1 the last), the others frozen; default: every parameter",
        metavar="STAGE")
    # knowledge distillation: a trained model's predictions as a second target, e.g. to
    # train a smaller network toward the default; computed on the fly (no grad), so the
    # input noise reaches them too
    distill_from: str | None = _setting(
        None, "weights name or checkpoint whose predictions the model also learns "
        "(knowledge distillation, e.g. default, to train a smaller network); it must use "
        "the trained model's graph settings and know every element of the data",
        metavar="MODEL")
    distill_weight: float = _setting(
        0.5, "with --distill-from: share of the loss on its predictions (0-1); the rest "
        "is on the relaxed targets", metavar="W")
    early_stop: int = _setting(40, "stop after this many epochs without improvement of the "
                                   "validation MAE")
    seed: int = _setting(0, "seed of the initial weights, the batch order, the noise and "
                            "(without splits) the validation share")
    device: str | None = _setting(None, "torch device (default: $DEFINET_DEVICE, else CUDA "
                                        "if present, else CPU)")
    train_split: str = _setting("train", "name of the training split (recorded with the "
                                         "run; the pairs' own split decides)")
    val_split: str = _setting("val", "name of the validation split (recorded with the run)")
    cache_dir: str | None = _setting(None, "cache built graphs here (ase.db sources)")
    threads: int | None = _setting(None, "torch CPU threads (default: torch's)")
    max_hours: float | None = _setting(None, "stop cleanly (resumable) after this many hours")
    deterministic: bool = _setting(True, "deterministic scatter/gather backward: exact "
                                         "resumes")
    compile: bool = _setting(False, "torch.compile the training forward: 1.5-2x faster on "
                                    "CPU after 1-4 minutes of compiling")
    description: str = _setting("", "what the training data is (for the model card)")

    @classmethod
    def from_file(cls, path: str | Path, **overrides: Any) -> TrainConfig:
        d = read_settings(path)
        d.update({k: v for k, v in overrides.items() if v is not None})
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown training setting(s) in {path}: {sorted(unknown)}")
        return cls(**d)


def read_settings(path: str | Path) -> dict[str, Any]:
    """The settings of a JSON or TOML training configuration file, as given."""
    path = Path(path)
    if path.suffix == ".toml":
        import tomllib

        return tomllib.loads(path.read_text())
    return json.loads(path.read_text())


# settings of an invocation, not of the run: never taken over from a saved run
RUNTIME_SETTINGS = frozenset({"out", "device", "threads", "max_hours", "compile", "cache_dir"})
# settings a resumed run may change (a longer run, more patience, another machine);
# `data` and `model` are compared through their content (pairs, model configuration)
RESUMABLE_CHANGES = RUNTIME_SETTINGS | {"epochs", "early_stop", "description"}
_STATE_KEYS = ("model", "ema", "opt", "sched", "gen", "torch_rng", "epoch", "best",
               "bad_epochs", "history", "model_config")


def load_training_state(path: str | Path) -> dict[str, Any]:
    """A ``last.pt`` training state (weights only, no code unpickled); ``ValueError``
    naming the file if it is corrupt or no training state. The file is never touched."""
    path = Path(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001  zip, pickle, EOF and OS errors alike
        reason = f"{type(err).__name__}: {str(err).split('. ')[0]}"
        raise ValueError(f"{path} is corrupt or unreadable ({reason}); it was left as it "
                         "is: delete it to start the run over, or use another --out "
                         "folder") from None
    missing = [k for k in _STATE_KEYS if k not in state] if isinstance(state, dict) else ["all"]
    if missing:
        raise ValueError(f"{path} is corrupt or unreadable (not a training state: lacks "
                         f"{missing}); it was left as it is: delete it to start the run "
                         "over, or use another --out folder")
    return state


def with_saved_settings(cfg: TrainConfig, given: Iterable[str]) -> TrainConfig:
    """On a resume (``cfg.out`` holds ``last.pt``): ``cfg`` with the saved run's value
    of every setting not ``given`` explicitly (runtime settings excepted), so that a
    resume needs no repetition; given ones that conflict are refused by
    :meth:`Trainer.try_resume`. Unchanged without ``last.pt``."""
    last = Path(cfg.out) / "last.pt"
    if not last.exists():
        return cfg
    saved = load_training_state(last).get("train_config") or {}
    given = set(given)
    taken = {k: v for k, v in saved.items() if k in TrainConfig.__dataclass_fields__
             and k not in given and k not in RUNTIME_SETTINGS}
    return dataclasses.replace(cfg, **taken)


def dataset_fingerprint(ds: PairDataset) -> str:
    """SHA-256 of a dataset's pairs in order (elements, markers, start and target
    coordinates, cell): which pairs a run trained or selected its best epoch on."""
    h = hashlib.sha256(str(len(ds)).encode())
    for s in ds.samples:
        g = s.graph
        for a in (g.numbers, g.markers, g.positions, g.cell, s.target, s.mask):
            h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


class EMA:
    """Exponential moving average of parameters and buffers (decay warmed up as
    ``min(decay, (1 + n) / (10 + n))``)."""

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.n = 0
        self.shadow = {k: v.detach().clone() for k, v in model.state_dict().items()}

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.n += 1
        d = min(self.decay, (1 + self.n) / (10 + self.n))
        for k, v in model.state_dict().items():
            if v.is_floating_point():
                self.shadow[k].mul_(d).add_(v.detach(), alpha=1 - d)
            else:
                self.shadow[k].copy_(v)

    def state_dict(self) -> dict[str, Any]:
        return {"n": self.n, "decay": self.decay, "shadow": self.shadow}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.n, self.decay = int(state["n"]), float(state["decay"])
        for k, v in state["shadow"].items():
            self.shadow[k].copy_(v)


def add_input_noise(batch: Batch, sigma: float, generator: torch.Generator) -> Batch:
    """``batch`` with Gaussian noise of standard deviation ``sigma`` (Å) added to its
    input positions (N, 3); targets and mask untouched. ``sigma == 0`` returns it as is."""
    if sigma == 0:
        return batch
    pos = batch.graph.positions
    noise = torch.randn(pos.shape, generator=generator, dtype=pos.dtype) * sigma
    return dataclasses.replace(batch, graph=dataclasses.replace(batch.graph,
                                                                positions=pos + noise))


def masked_distance_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor,
                         weight: torch.Tensor | None = None) -> torch.Tensor:
    """Mean Euclidean distance (Å) between ``pred`` and ``target`` (n, 3) over the rows
    where ``mask`` (n,) is true; with ``weight`` (n,), the weighted mean over those rows."""
    diff = (pred - target)[mask]
    dist = torch.sqrt((diff * diff).sum(dim=1) + 1e-12)
    if weight is None:
        return dist.mean()
    w = weight[mask]
    return (w * dist).sum() / w.sum()


def site_weights(batch: Batch, weights: dict[str, float]) -> torch.Tensor | None:
    """Per-site loss weights (n,) from each pair's material (``None`` without weights)."""
    if not weights:
        return None
    per_graph = torch.tensor([weights.get(info.get("material"), 1.0) for info in batch.infos],
                             dtype=batch.target.dtype, device=batch.target.device)
    return per_graph[batch.graph.batch]


def load_distiller(name: str, student: DefiNet, elements: Iterable[str],
                   device: torch.device) -> DefiNet:
    """The frozen model ``name`` (weights name or path) whose predictions ``student``
    learns, on ``device`` in eval mode. ``ValueError`` when its graph settings (cutoff,
    neighbour cap) differ from ``student``'s (the batches are built for the student) or
    it lacks an element of the data."""
    teacher = get_model(name, device).eval().requires_grad_(False)
    ours = (student.cutoff, student.max_neighbors)
    theirs = (teacher.cutoff, teacher.max_neighbors)
    if ours != theirs:
        raise ValueError(f"--distill-from {name}: its graph settings (cutoff {theirs[0]} Å, "
                         f"max_neighbors {theirs[1]}) differ from the trained model's "
                         f"(cutoff {ours[0]} Å, max_neighbors {ours[1]})")
    missing = [chemical_symbols[z] for z in sorted(set(elements) - set(teacher.elements))]
    if missing:
        raise ValueError(f"--distill-from {name}: it does not know element(s) {missing} "
                         "of the training data")
    return teacher


def _check_material_weights(weights: dict[str, float], train: PairDataset) -> None:
    materials = sorted({str(s.info.get("material")) for s in train.samples})
    unknown = sorted(set(weights) - set(materials))
    if unknown:
        raise ValueError(f"material weights name {unknown}, which no training pair has "
                         f"(materials: {materials})")
    bad = {k: w for k, w in weights.items() if not (math.isfinite(w) and w > 0)}
    if bad:
        raise ValueError(f"material weights must be positive and finite, got {bad}")


def _dist_setup(device: torch.device) -> tuple[int, int, torch.device]:
    """(rank, world size, this rank's device) under ``torchrun``; (0, 1, device) alone.

    The process group's backend follows the training device (NCCL for CUDA, gloo for
    CPU), so ``--device cpu`` trains with gloo on a machine that has GPUs too.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1, device
    if device.type == "cuda":
        local = int(os.environ.get("LOCAL_RANK", "0"))
        visible = torch.cuda.device_count()
        if local >= visible:
            raise ValueError(f"torchrun started local rank {local} but this node has only "
                             f"{visible} visible CUDA device(s): use --nproc_per_node="
                             f"{visible} (one process per GPU) or --device cpu")
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return torch.distributed.get_rank(), world, device


def set_up_torch(config: TrainConfig) -> None:
    """The process-wide torch settings of a training run: CPU threads, deterministic
    algorithms, the global seed. For entry points (``definet train``) to call before
    building a :class:`Trainer`; the library itself leaves global state alone."""
    if config.threads:
        torch.set_num_threads(config.threads)
    if config.deterministic:
        # the backward of gathers accumulates in thread order otherwise; Adam turns
        # those 1e-12 differences into visible ones, breaking exact resumes
        torch.use_deterministic_algorithms(True, warn_only=True)
    torch.manual_seed(config.seed)


def _fingerprint(model: nn.Module, exclude: str) -> str:
    """SHA-256 of the state-dict tensors whose names do not start with ``exclude``."""
    h = hashlib.sha256()
    for k, v in model.state_dict().items():
        if not k.startswith(exclude):
            h.update(k.encode())
            h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


class Trainer:
    """Train (or fine-tune) a DefiNet on a train/val :class:`PairDataset` pair."""

    def __init__(self, config: TrainConfig, train: PairDataset, val: PairDataset,
                 model: DefiNet | None = None, metadata: dict[str, Any] | None = None):
        if len(train) == 0 or len(val) == 0:
            raise ValueError(f"need training and validation pairs (got {len(train)} train, "
                             f"{len(val)} val)")
        _check_material_weights(config.material_weights, train)  # before any set-up
        if len(val) < MIN_VAL_PAIRS:
            logger.warning("only %d validation pair(s): too few to select the best epoch "
                           "on (and to steer early stopping and the learning rate); give "
                           "more pairs or a larger validation share", len(val))
        if not config.input_noise >= 0:
            raise ValueError(f"input_noise must be >= 0 Å, got {config.input_noise}")
        if not 0 <= config.distill_weight <= 1:
            raise ValueError(f"distill_weight must be from 0 to 1, got "
                             f"{config.distill_weight}")
        if config.distill_from and config.train_stage is not None:
            raise ValueError("--distill-from trains every stage: drop --train-stage (and "
                             "--add-stage, which trains the new stage alone)")
        self.cfg = config
        # the pairs as given (before staging): a resume must train and select on these
        self.data_fingerprint = {"train": dataset_fingerprint(train),
                                 "val": dataset_fingerprint(val)}
        self.rank, self.world, self.device = _dist_setup(resolve_device(config.device))
        # threads, deterministic mode and the global seed are the entry point's
        # (set_up_torch); the initial weights come from config.seed alone, and the
        # caller's random state is restored afterwards
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            if model is None:
                model = DefiNet(DefiNetConfig(**{**config.model,
                                                 "elements": train.elements}))
            missing = sorted(set(train.elements + val.elements) - set(model.elements))
            if missing:
                added = model.extend_elements(missing)
                logger.info("added element(s) %s to the embedding", added)
        self.full: DefiNet | None = None  # the whole model while its last stage trains alone
        self.frozen = ""  # fingerprint of the frozen stages' weights (staged training)
        if config.train_stage is not None:
            n_stages = model.config.refine + 1
            try:
                stage = range(n_stages)[config.train_stage]
            except IndexError:
                raise ValueError(f"train_stage {config.train_stage} does not exist: the model "
                                 f"has {n_stages} stage(s)") from None
            if stage and stage == n_stages - 1:
                self.full = model.to(self.device)
                self.frozen = _fingerprint(model, exclude="refiners." + str(stage - 1) + ".")
                logger.info("training stage %d alone on the predictions of the %d frozen "
                            "stage(s) before it (val 'dummy' = their error)", n_stages,
                            n_stages - 1)
                train, val = (staged_dataset(model, d, n_stages - 1, device=self.device)
                              for d in (train, val))
                model = model.refiners[-1]
            else:
                trained = {id(p) for p in model.stage_parameters(stage)}
                for p in model.parameters():
                    p.requires_grad_(id(p) in trained)
        self.model = model.to(self.device)
        self.distiller = (load_distiller(config.distill_from, self.model,
                                         train.elements + val.elements, self.device)
                          if config.distill_from else None)
        if self.distiller is not None and config.distill_weight and not config.input_noise:
            # noise-free inputs: the distilled predictions are the same every epoch
            train = distilled_dataset(self.distiller, train, device=self.device)
        self.train_set, self.val_set = train, val
        self.metadata = dict(metadata or {})
        if config.distill_from:
            self.metadata["distilled_from"] = {
                "weights": str(config.distill_from), "weight": config.distill_weight,
                "sha256": stored_checksum(config.distill_from)}
        self.net = self.model
        if self.world > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.net = nn.parallel.DistributedDataParallel(self.model, device_ids=ids)
        if config.compile:  # the checkpoints keep the plain module's parameter names
            self.net = torch.compile(self.net, dynamic=True)
        self.opt = torch.optim.AdamW([p for p in self.model.parameters() if p.requires_grad],
                                     lr=config.lr,
                                     weight_decay=config.weight_decay)
        if config.schedule == "plateau":
            self.sched = torch.optim.lr_scheduler.ReduceLROnPlateau(
                self.opt, mode="min", factor=config.lr_factor, patience=config.lr_patience,
                min_lr=config.min_lr)
        elif config.schedule == "cosine":
            steps = max(config.epochs * self.batches_per_epoch(), 1)
            self.sched = torch.optim.lr_scheduler.CosineAnnealingLR(
                self.opt, T_max=steps, eta_min=config.min_lr)
        else:
            raise ValueError(f"unknown schedule {config.schedule!r}: 'plateau' or 'cosine'")
        self.ema = EMA(self.model, config.ema_decay)
        self.gen = torch.Generator().manual_seed(config.seed)
        self.epoch = 0
        self.best = math.inf
        self.bad_epochs = 0
        self.skipped = 0  # batches skipped for a non-finite loss or gradient
        self.history: list[dict[str, float]] = []
        self.start: dict[str, float] = {}  # validation metrics of the starting weights
        self.out = Path(config.out)

    # -------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        return {"model": self.model.state_dict(), "ema": self.ema.state_dict(),
                "opt": self.opt.state_dict(), "sched": self.sched.state_dict(),
                "gen": self.gen.get_state(), "torch_rng": torch.get_rng_state(),
                "epoch": self.epoch, "best": self.best, "bad_epochs": self.bad_epochs,
                "history": self.history, "model_config": self.model.config.to_dict(),
                "frozen_stages": self.frozen, "data_fingerprint": self.data_fingerprint,
                "start_metrics": self.start, "train_config": asdict(self.cfg)}

    def load_state_dict(self, s: dict[str, Any]) -> None:
        self.model.load_state_dict(s["model"])
        self.ema.load_state_dict(s["ema"])
        self.opt.load_state_dict(s["opt"])
        t_max = getattr(self.sched, "T_max", None)
        self.sched.load_state_dict(s["sched"])
        if t_max is not None:  # cosine: a resumed run may extend --epochs
            self.sched.T_max = t_max
        self.gen.set_state(s["gen"])
        torch.set_rng_state(s["torch_rng"])
        self.epoch, self.best = int(s["epoch"]), float(s["best"])
        self.bad_epochs, self.history = int(s["bad_epochs"]), list(s["history"])
        self.start = {k: float(v) for k, v in s.get("start_metrics", {}).items()}

    def try_resume(self) -> bool:
        """Load ``out/last.pt`` if it exists (weights only, no code is unpickled).

        Refused (``ValueError``, nothing written) when the saved run used another model,
        other settings (those in :data:`RESUMABLE_CHANGES` may change) or other
        training or validation pairs, or when ``last.pt`` is corrupt."""
        last = self.out / "last.pt"
        if not last.exists():
            return False
        state = load_training_state(last)
        # through from_dict, a state saved before a newer field existed reads as its default
        saved = DefiNetConfig.from_dict(state["model_config"]).to_dict()
        if saved != self.model.config.to_dict():
            raise ValueError(f"{last} was written by a different model configuration; "
                             "use another --out folder to start a new run")
        # staged training: the frozen stages come from --from, not from last.pt
        if state.get("frozen_stages", self.frozen) != self.frozen:
            raise ValueError(f"{last} trained its stage on the predictions of other frozen "
                             "stages than those given now; use the same --from, or another "
                             "--out folder")
        self._check_same_run(last, state)
        try:
            self.load_state_dict(state)
        except (KeyError, RuntimeError, ValueError, TypeError) as err:
            raise ValueError(f"{last} is corrupt or unreadable ({type(err).__name__}: "
                             f"{err}); delete it to start the run over, or use another "
                             "--out folder") from None
        logger.info("resumed from %s at epoch %d (best val MAE %.4f Å)", last, self.epoch,
                    self.best)
        return True

    def _check_same_run(self, last: Path, state: dict[str, Any]) -> None:
        """Refuse a resume with other settings or other pairs than the saved run's."""
        fingerprint = state.get("data_fingerprint")
        saved, now = state.get("train_config") or {}, asdict(self.cfg)
        skip = RESUMABLE_CHANGES | {"model"} | ({"data"} if fingerprint else set())
        diff = [f"{k}={saved[k]!r} (now {now[k]!r})" for k in sorted(saved)
                if k in now and k not in skip and saved[k] != now[k]]
        if diff:
            raise ValueError(f"{last} was trained with other settings: {', '.join(diff)}; "
                             "resume with the saved settings (leave them out, or give the "
                             "same), or use another --out folder to start a new run")
        for part, name in (("train", "training"), ("val", "validation")):
            if fingerprint and fingerprint.get(part) != self.data_fingerprint[part]:
                raise ValueError(
                    f"{last} was trained on other {name} pairs than those given now "
                    "(another --data, --material or split?); resuming would "
                    + ("train on other pairs" if part == "train" else
                       "select the best epoch on another validation set")
                    + ": give the same pairs, or use another --out folder")

    def _trim_log(self) -> None:
        """Make ``log.csv`` agree with the training state: drop the rows of epochs after
        the last saved one (a run killed between its log row and ``last.pt``) and
        repeated epochs."""
        path = self.out / "log.csv"
        if not path.exists():
            return
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            rows, fields = list(reader), reader.fieldnames
        keep, seen = [], set()
        for row in rows:
            try:
                epoch = int(float(row.get("epoch") or "nan"))
            except ValueError:
                continue
            if epoch <= self.epoch and epoch not in seen:
                seen.add(epoch)
                keep.append(row)
        if len(keep) == len(rows):
            return
        logger.info("log.csv: dropped %d row(s) past the saved epoch %d", len(rows) - len(keep),
                    self.epoch)
        if not keep:
            path.unlink()
            return
        with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=fields)
            w.writeheader()
            w.writerows(keep)

    def _save_atomic(self, obj: Any, path: Path) -> None:
        atomic_write(path, lambda tmp: torch.save(obj, tmp))

    def ema_model(self) -> DefiNet:
        m = self.model.blank_like()
        m.load_state_dict(self.ema.shadow)
        return m

    # -------------------------------------------------------------- loop
    def batches_per_epoch(self) -> int:
        """Optimizer steps per epoch on each rank."""
        return -(-len(self.train_set) // self.cfg.batch_size) // self.world

    def train_epoch(self) -> float:
        self.net.train()
        total, n = 0.0, 0
        nb = self.batches_per_epoch()
        bar = tqdm(iter_batches(self.train_set, self.cfg.batch_size, True, self.gen,
                                self.rank, self.world), total=nb, leave=False,
                   desc=f"epoch {self.epoch + 1}", unit="batch",
                   disable=None if self.rank == 0 else True)  # None: off without a TTY
        t0 = last_note = time.time()
        for i, batch in enumerate(bar, 1):
            if n:
                bar.set_postfix(loss=f"{total / n:.4f}", refresh=False)
            if bar.disable and self.rank == 0 and time.time() - last_note >= PROGRESS_INTERVAL_S:
                last_note = time.time()  # no bar (no terminal): say where the epoch is
                logger.info("epoch %d: batch %d/%d, train loss %.4f Å so far, %.0f s",
                            self.epoch + 1, i, nb, total / max(n, 1), last_note - t0)
            b = add_input_noise(batch, self.cfg.input_noise, self.gen).to(self.device)
            pred = self.net(b.graph)[-1]
            loss = self.loss(pred, b)
            self.opt.zero_grad(set_to_none=True)
            if not torch.isfinite(loss):  # never let one bad batch poison the weights
                self.skipped += 1
                logger.warning("non-finite loss: batch skipped (%d so far)", self.skipped)
                if self.skipped > 20:
                    raise FloatingPointError("training diverged: more than 20 non-finite "
                                             "losses; lower the learning rate")
                continue
            loss.backward()
            norm = nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.clip_grad)
            if not torch.isfinite(norm):
                self.skipped += 1
                logger.warning("non-finite gradient: step skipped (%d so far)", self.skipped)
                continue
            self.opt.step()
            if self.cfg.schedule == "cosine":
                self.sched.step()
            self.ema.update(self.model)
            total += float(loss.detach())
            n += 1
        return total / max(n, 1)

    def loss(self, pred: torch.Tensor, b: Batch) -> torch.Tensor:
        """Training loss (Å) of the predicted positions ``pred`` (N, 3) on batch ``b``:
        the weighted mean distance to the relaxed targets; with a distiller, mixed with
        the distance to its predictions by ``distill_weight`` (those the batch carries,
        else computed here: with input noise they change every step)."""
        weight = site_weights(b, self.cfg.material_weights)
        loss = masked_distance_loss(pred, b.target, b.mask, weight)
        w = self.cfg.distill_weight
        if self.distiller is None or not w:
            return loss
        soft = b.soft
        if soft is None:
            with torch.no_grad():
                soft = self.distiller(b.graph)[-1]
        return ((1 - w) * loss
                + w * masked_distance_loss(pred, soft.to(pred.dtype), b.mask, weight))

    def fit(self) -> dict[str, float]:
        """Run until ``epochs``, early stopping or ``max_hours``; returns the best metrics."""
        self.out.mkdir(parents=True, exist_ok=True)
        if self.rank == 0:
            self._trim_log()
            (self.out / "config.json").write_text(json.dumps(asdict(self.cfg), indent=2))
        t_start = time.time()
        if self.epoch == 0 and not self.start:
            self.start = self.validate_start()
        while self.epoch < self.cfg.epochs and self.bad_epochs < self.cfg.early_stop:
            t0 = time.time()
            train_loss = self.train_epoch()
            ema = self.ema_model()
            acc, _ = evaluate_model(ema, self.val_set, self.cfg.batch_size, self.device)
            val_mae, val_a3 = acc.mae(), acc.mae(region="A3")
            if self.cfg.schedule == "plateau":
                self.sched.step(val_mae)
            self.epoch += 1
            improved = val_mae < self.best - 1e-7
            if improved:
                self.best, self.bad_epochs = val_mae, 0
            else:
                self.bad_epochs += 1
            row = {"epoch": self.epoch, "train_loss": train_loss, "val_mae": val_mae,
                   "val_a3": val_a3, "val_dummy_mae": acc.mae(region="dummy_all"),
                   "lr": self.opt.param_groups[0]["lr"], "seconds": time.time() - t0}
            self.history.append(row)
            if self.rank == 0:
                self._log_row(row)
                if improved:
                    self._save_best(ema, row)
                self._save_atomic(self.state_dict(), self.out / "last.pt")
            logger.info("epoch %d: train %.4f  val MAE %.4f (dummy %.4f)  A3 %.4f  lr %.2e%s",
                        self.epoch, train_loss, val_mae, row["val_dummy_mae"], val_a3,
                        row["lr"], "  *" if improved else "")
            if self.cfg.max_hours and time.time() - t_start > self.cfg.max_hours * 3600:
                logger.info("stopping after %.2f h (max_hours); rerun to resume",
                            (time.time() - t_start) / 3600)
                break
        start = self.start.get("val_mae")
        if self.cfg.init_from and start is not None and self.best > start:
            logger.warning("fine-tuning did not improve on the starting checkpoint's "
                           "validation MAE (%.4f Å; best epoch %.4f Å)", start, self.best)
        return {"best_val_mae": self.best, "epochs": self.epoch,
                **({"start_val_mae": start} if start is not None else {})}

    def validate_start(self) -> dict[str, float]:
        """Validation MAE, A3 and Dummy (Å) of the weights before the first step (the
        starting checkpoint when fine-tuning), logged, so the gain is visible."""
        acc, _ = evaluate_model(self.model, self.val_set, self.cfg.batch_size, self.device)
        start = {"val_mae": acc.mae(), "val_a3": acc.mae(region="A3"),
                 "val_dummy_mae": acc.mae(region="dummy_all")}
        logger.info("before training (%s): val MAE %.4f (dummy %.4f)  A3 %.4f",
                    f"from {self.cfg.init_from}" if self.cfg.init_from else "initial weights",
                    start["val_mae"], start["val_dummy_mae"], start["val_a3"])
        return start

    def _log_row(self, row: dict[str, float]) -> None:
        path = self.out / "log.csv"
        new = not path.exists()
        with open(path, "a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(row))
            if new:
                w.writeheader()
            w.writerow(row)

    def _save_best(self, ema: DefiNet, row: dict[str, float]) -> None:
        meta = {**self.metadata, "training": {
            k: v for k, v in asdict(self.cfg).items() if k not in ("device", "threads")},
            "selected_epoch": row["epoch"],
            "metrics": {"val_mae": row["val_mae"], "val_a3": row["val_a3"],
                        "val_dummy_mae": row["val_dummy_mae"],
                        **{f"start_{k}": v for k, v in self.start.items()}},
            "n_train": len(self.train_set), "n_val": len(self.val_set)}
        save_checkpoint(self.export(ema), self.out / "best.safetensors", meta)

    def export(self, trained: DefiNet) -> DefiNet:
        """The model to save: ``trained`` itself, or (when the last stage trained alone)
        the whole model with ``trained`` as its last stage."""
        if self.full is None:
            return trained
        full = copy.deepcopy(self.full)
        full.refiners[-1].load_state_dict(trained.state_dict())
        return full
