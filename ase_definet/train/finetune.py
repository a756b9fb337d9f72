"""Fine-tuning surgery: the model a fine-tuning run starts from.

A checkpoint keeps its architecture when fine-tuned, except for what can change without
changing its output: the neighbour cap (a graph setting, not a weight shape), the axial
global channel (it starts inert), the width (grown by an integer factor, function
preserving, :func:`~ase_definet.model.widen.widen_model`), a refinement stage
appended as a copy of the last one, the number of stages cut to a prefix (the
first K stages alone compute what ``stages=K`` does), and the refinement stages cut
to their first layers. :func:`prepare_finetune` does all
of it::

    base = get_model("default", "cpu")
    model = prepare_finetune(base, hidden=2 * base.config.hidden, add_stage=True)
    config.train_stage = finetune_train_stage(config.train_stage, add_stage=True)  # -1
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from typing import Any

from ..model import DefiNet
from ..model.widen import widen_model

logger = logging.getLogger(__name__)

# the DefiNetConfig settings a fine-tuning run may change
FINETUNE_CHANGES = frozenset({"max_neighbors", "axial_global", "hidden"})


def check_finetune_changes(changes: Mapping[str, Any]) -> None:
    """``ValueError`` if ``changes`` (DefiNetConfig names) alter more than
    :data:`FINETUNE_CHANGES` allows."""
    fixed = sorted(set(changes) - FINETUNE_CHANGES)
    if fixed:
        raise ValueError("fine-tuning keeps the checkpoint's architecture: drop "
                         f"{fixed} (only --max-neighbors, --axial-global and --hidden "
                         "may change)")


def widen_to(base: DefiNet, hidden: int, *, seed: int = 0,
             name: str = "the checkpoint") -> DefiNet:
    """``base`` widened to feature width ``hidden``, computing the same output (``base``
    itself when the width is already ``hidden``). ``hidden`` must be a multiple of the
    base width: fine-tuning can only widen. ``seed`` draws the symmetry-breaking noise."""
    width = base.config.hidden
    if hidden == width:
        return base
    if hidden % width or hidden < width:
        raise ValueError(f"--hidden {hidden} must be a multiple of the checkpoint's "
                         f"width {width} (fine-tuning can only widen)")
    wide = widen_model(base, hidden // width, seed=seed)
    logger.info("widened %s from F=%d to F=%d (same output)", name, width, hidden)
    return wide


def first_stages(base: DefiNet, keep: int, name: str = "the checkpoint") -> DefiNet:
    """The first ``keep`` stages of ``base`` as a model of their own: it computes what
    ``base`` computes with ``stages=keep`` (``base`` itself when it has ``keep``
    stages). ``ValueError`` unless 1 <= ``keep`` <= ``base``'s stage count."""
    n = base.config.refine + 1
    if isinstance(keep, bool) or not 1 <= int(keep) <= n:
        raise ValueError(f"--keep-stages must be from 1 to {n}, the stages of {name}; "
                         f"got {keep}")
    keep = int(keep)
    if keep == n:
        return base
    model = base.blank_like(refine=keep - 1)
    dropped = tuple(f"refiners.{i}." for i in range(keep - 1, n - 1))
    model.load_state_dict({k: v for k, v in base.state_dict().items()
                           if not k.startswith(dropped)})
    logger.info("kept the first %d of the %d stages of %s", keep, n, name)
    return model


def cut_refiners(base: DefiNet, layers: int, name: str = "the checkpoint") -> DefiNet:
    """``base`` with every refinement stage cut to its first ``layers`` layers (``base``
    itself when they have that many). The first refiner's prediction is then what the
    uncut one had after ``layers`` layers; later stages start from it. ``ValueError``
    unless ``base`` has refiners and 1 <= ``layers`` <= their layer count."""
    R = base.refiner_layers
    if not base.config.refine:
        raise ValueError(f"--refine-layers needs refinement stages, and {name} has none "
                         "(add one with --add-stage)")
    if isinstance(layers, bool) or not 1 <= int(layers) <= R:
        raise ValueError(f"--refine-layers must be from 1 to {R}, the layers of each "
                         f"refinement stage of {name}; got {layers}")
    layers = int(layers)
    if layers == R:
        return base
    model = base.blank_like(refine_layers=layers)
    kept = {k: v for k, v in base.state_dict().items()
            if not ((m := re.match(r"refiners\.\d+\.layers\.(\d+)\.", k))
                    and int(m.group(1)) >= layers)}
    missing, unexpected = model.load_state_dict(kept, strict=False)
    # the new last layer of each refiner feeds no global node: only its aggregation
    # weights (whatever DefiNetLayer names them) may be left over
    last = re.compile(rf"refiners\.\d+\.layers\.{layers - 1}\.")
    if missing or any(not last.match(k) for k in unexpected):
        raise ValueError(f"{name} does not match its own configuration: missing {missing}, "
                         f"unexpected {unexpected}")
    logger.info("cut the refinement stages of %s from %d to %d layer(s)", name, R, layers)
    return model


def load_base_weights(model: DefiNet, base: DefiNet, *, new_stage: bool = False,
                      name: str = "the checkpoint") -> DefiNet:
    """Copy ``base``'s weights into ``model`` (same architecture, up to a new axial
    channel and, with ``new_stage``, one more refinement stage, which starts as a copy
    of ``base``'s last stage). ``ValueError`` for any other mismatch of the state-dict
    keys. Returns ``model``."""
    missing, unexpected = model.load_state_dict(base.state_dict(), strict=False)
    if new_stage:
        last = base.refiners[-1] if base.config.refine else base
        model.refiners[-1].load_state_dict(
            {k: v for k, v in last.state_dict().items() if not k.startswith("refiners.")})
        prefix = f"refiners.{len(model.refiners) - 1}."
        missing = [k for k in missing if not k.startswith(prefix)]
        logger.info("added stage %d, a copy of the checkpoint's last stage",
                    len(model.refiners) + 1)
    if unexpected or any(".ax_" not in k for k in missing):  # axial weights start inert
        raise ValueError(f"{name} does not match its own configuration: "
                         f"missing {missing}, unexpected {unexpected}")
    return model


def prepare_finetune(base: DefiNet, *, hidden: int | None = None,
                     max_neighbors: int | None = None, axial_global: bool | None = None,
                     add_stage: bool = False, keep_stages: int | None = None,
                     refine_layers: int | None = None, seed: int = 0,
                     name: str = "the checkpoint") -> DefiNet:
    """The model a fine-tuning run of ``base`` starts from (``base`` is left as it is).

    Args:
        base: the trained checkpoint's model.
        hidden: feature width F; a multiple of ``base``'s (function-preserving widening,
            noise drawn from ``seed``). ``None`` keeps it.
        max_neighbors: neighbour cap of the graph; ``None`` keeps it.
        axial_global: switch the axial global channel on (it starts inert, so the
            output is unchanged); ``None`` keeps it.
        add_stage: append a refinement stage that starts as a copy of the last one
            (train it with :func:`finetune_train_stage`).
        keep_stages: keep only the first this many stages (:func:`first_stages`;
            before ``add_stage``); ``None`` keeps them all.
        refine_layers: cut every refinement stage to its first this many layers
            (:func:`cut_refiners`; after ``add_stage``); ``None`` keeps them.
        name: what ``base`` is called in messages (its weights name or path).

    Returns a new :class:`DefiNet`, on ``base``'s device and in its dtype, that computes
    ``base``'s output (with ``keep_stages``, that of its first stages; with
    ``add_stage``, one more stage on top). ``ValueError`` for a width that is no
    multiple, a stage count out of range, or weights that do not match ``base``'s own
    configuration.
    """
    if keep_stages is not None:
        base = first_stages(base, keep_stages, name)
    base = widen_to(base, base.config.hidden if hidden is None else hidden, seed=seed,
                    name=name)
    changes = {k: v for k, v in (("max_neighbors", max_neighbors),
                                 ("axial_global", axial_global)) if v is not None}
    model = base.blank_like(**changes, refine=base.config.refine + bool(add_stage))
    model = load_base_weights(model, base, new_stage=bool(add_stage), name=name)
    return model if refine_layers is None else cut_refiners(model, refine_layers, name)


def finetune_train_stage(train_stage: int | None, add_stage: bool) -> int | None:
    """The stage to train: ``train_stage`` if given; else the new stage (``-1``) after
    ``add_stage``, on the frozen stages' predictions; else ``None`` (every parameter)."""
    if train_stage is None and add_stage:
        return -1
    return train_stage


def finetune_metadata(base: DefiNet, model: DefiNet, name: str,
                      keep_stages: int | None = None,
                      refine_layers: int | None = None) -> dict[str, Any]:
    """The checkpoint metadata of a fine-tuning run of ``base`` (called ``name``) that
    starts from ``model``: ``finetuned_from``; if widened, ``widened``; if cut to its
    first stages, ``kept_stages``; if its refiners were cut to their first layers,
    ``cut_refine_layers``."""
    meta: dict[str, Any] = {"finetuned_from": str(name)}
    n = base.config.refine + 1
    if keep_stages is not None and keep_stages < n:
        meta["kept_stages"] = {"kept": int(keep_stages), "of": n}
    if refine_layers is not None and model.refiner_layers < base.refiner_layers:
        meta["cut_refine_layers"] = {"kept": model.refiner_layers, "of": base.refiner_layers}
    if model.config.hidden != base.config.hidden:
        meta["widened"] = {"from_hidden": base.config.hidden, "to_hidden": model.config.hidden}
    return meta
