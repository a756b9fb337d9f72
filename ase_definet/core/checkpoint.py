"""Save and load DefiNet weights without unpickling code.

A checkpoint is one ``.safetensors`` file: the ``state_dict`` tensors plus JSON metadata
(format version, the :class:`~ase_definet.model.DefiNetConfig` including the graph
settings and the element list, a description of the training data, metrics, ...).
Named weights live in the package folder ``ase_definet/weights`` (the repository's
``weights/``), each with a model card ``NAME.md``.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import re
from collections.abc import Mapping
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..model import DefiNet, DefiNetConfig
from .fileio import atomic_write
from .validate import check_config

logger = logging.getLogger(__name__)

FORMAT = "ase_definet.checkpoint/1"  # the file format name, not a module path
SUFFIX = ".safetensors"
CHECKSUM_KEY = "sha256"  # metadata key: SHA-256 of the tensors (see tensors_sha256)


def tensors_sha256(tensors: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 (hex) over the name, dtype, shape and bytes of every tensor, by name."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().to("cpu").contiguous()
        h.update(f"{name}|{t.dtype!s}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def save_checkpoint(model: DefiNet, path: str | Path, metadata: dict[str, Any] | None = None
                    ) -> Path:
    """Write ``model`` and ``metadata`` to ``path`` atomically (temp file + rename), with
    a SHA-256 of the tensors (verified by :func:`load_checkpoint`)."""
    path = Path(path)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    meta = {"format": FORMAT, "config": json.dumps(model.config.to_dict()),
            "metadata": json.dumps(metadata or {}, default=str),
            CHECKSUM_KEY: tensors_sha256(tensors)}
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=meta))


def _read_header(path: Path) -> tuple[dict[str, str], dict[str, tuple[int, ...]]]:
    """The metadata strings and the tensor shapes of a safetensors file (no tensor data
    is read)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118
    except (SafetensorError, OSError) as err:
        raise ValueError(f"{path} is not a readable DefiNet checkpoint: {err}") from None
    return meta, shapes


def _parse_metadata(path: Path, meta: dict[str, str]) -> tuple[DefiNetConfig, dict[str, Any]]:
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path} is not a DefiNet checkpoint (format {meta.get('format')!r})")
    missing = [k for k in ("config", "metadata") if k not in meta]
    if missing:
        raise ValueError(f"{path}: the checkpoint metadata lacks the key(s) {missing}")
    parsed = {}
    for key in ("config", "metadata"):
        try:
            parsed[key] = json.loads(meta[key])
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}: the checkpoint's {key!r} metadata is not valid JSON "
                             f"({err})") from None
    try:
        check_config(parsed["config"])
        config = DefiNetConfig.from_dict(parsed["config"])
    except (ValueError, TypeError) as err:
        raise ValueError(f"{path}: bad checkpoint config: {err}") from None
    if not isinstance(parsed["metadata"], dict):
        raise ValueError(f"{path}: the checkpoint's 'metadata' is not a JSON object")
    return config, parsed["metadata"]


def read_metadata(path: str | Path) -> tuple[DefiNetConfig, dict[str, Any]]:
    """Config and metadata of a checkpoint file, without loading the tensors. The
    config is checked against sane bounds (:data:`ase_definet.core.validate.CONFIG_BOUNDS`)."""
    path = _resolve_path(path)
    meta, _ = _read_header(path)
    return _parse_metadata(path, meta)


def _check_shapes(path: Path, config: DefiNetConfig, shapes: dict[str, tuple[int, ...]]
                  ) -> None:
    """The tensors that fix every dimension of the model (embeddings, radial basis,
    layer and stage counts) must fit ``config``, so that the model built from it is no
    larger than the file's own tensors. No tensor is read or allocated."""
    F, n_el = config.hidden, len(config.elements)

    def count(pattern: str) -> int:
        return len({m.group(1) for k in shapes if (m := re.match(pattern, k))})

    problems = []
    n_stages = count(r"refiners\.(\d+)\.")
    if n_stages != config.refine:
        problems.append(f"refine={config.refine}, but the file holds {n_stages} refinement "
                        "stage(s)")
    for p in ["", *(f"refiners.{r}." for r in range(min(n_stages, config.refine)))]:
        n_layers = count(re.escape(p) + r"layers\.(\d+)\.")
        want_layers = config.refiner_layers if p else config.layers
        if n_layers != want_layers:
            setting = "layers" if not p or not config.refine_layers else "refine_layers"
            problems.append(f"{setting}={want_layers}, but the file holds {n_layers} "
                            f"layer(s) in {p or 'the first stage'}")
        want = {f"{p}element_embedding.weight": (n_el, F),
                f"{p}marker_embedding.weight": (3, F), f"{p}global_scalar": (F,),
                f"{p}layers.0.msg_rbf.weight": (3 * F, config.n_rbf)}
        for k, shape in want.items():
            if k not in shapes:
                problems.append(f"tensor {k} is missing")
            elif shapes[k] != shape:
                problems.append(f"tensor {k} has shape {shapes[k]}, the saved config needs "
                                f"{shape}")
        if (f"{p}layers.0.ax_c.weight" in shapes) != config.axial_global:
            problems.append(f"axial_global={config.axial_global} does not match the tensors")
    if problems:
        raise ValueError(f"{path}: weights do not fit the saved config: {problems[0]}"
                         + (f" ({len(problems) - 1} more problem(s))" if len(problems) > 1
                            else ""))


def _check_state_shapes(path: Path, model: DefiNet, shapes: dict[str, tuple[int, ...]]
                        ) -> None:
    """Every tensor name and shape of the built ``model`` must be the file's."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing = sorted(set(expected) - set(shapes))
    unexpected = sorted(set(shapes) - set(expected))
    if missing or unexpected:
        raise ValueError(f"{path}: weights do not fit the saved config (missing "
                         f"{missing[:5]}, unexpected {unexpected[:5]})")
    wrong = [(k, shapes[k], v) for k, v in expected.items() if shapes[k] != v]
    if wrong:
        k, got, want = wrong[0]
        raise ValueError(f"{path}: weights do not fit the saved config: tensor {k} has "
                         f"shape {got}, the saved config needs {want} ({len(wrong)} "
                         "tensor(s) of the wrong shape)")


def _check_tensors(path: Path, state: dict[str, torch.Tensor], digest: str | None) -> None:
    """The tensors must match the file's checksum (if it has one) and be finite."""
    if digest is not None and tensors_sha256(state) != digest:
        raise ValueError(f"{path}: the tensor data does not match the checkpoint's SHA-256 "
                         "checksum (the file is corrupted); refusing to load it")
    bad = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise ValueError(f"{path}: non-finite weights (NaN or inf) in {bad[:5]} "
                         f"({len(bad)} tensor(s)); the file is corrupted")


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu"
                    ) -> tuple[DefiNet, dict[str, Any]]:
    """Rebuild the model saved in ``path`` (a file or a weights name); returns
    ``(model, metadata)``. The model is in eval mode.

    Before anything is built, the config is checked against sane bounds and against
    the shapes of the stored tensors; the tensors are then verified against the
    file's SHA-256 (files written before it was stored: for finiteness only).
    """
    path = _resolve_path(path)
    header, shapes = _read_header(path)
    config, meta = _parse_metadata(path, header)
    _check_shapes(path, config, shapes)
    try:
        state = load_file(str(path), device="cpu")
    except (SafetensorError, OSError) as err:
        raise ValueError(f"{path} is not a readable DefiNet checkpoint: {err}") from None
    _check_tensors(path, state, header.get(CHECKSUM_KEY))
    model = DefiNet(config)
    _check_state_shapes(path, model, shapes)
    model.load_state_dict(state)
    model.metadata = meta
    return model.to(device).eval(), meta


def weights_dir():
    """The folder of named weights shipped with the package (the repository's
    ``weights/``, installed as ``ase_definet.weights``)."""
    try:
        return resources.files("ase_definet.weights")
    except ModuleNotFoundError:  # running from a source tree that is not installed
        return Path(__file__).resolve().parents[2] / "weights"  # ase_definet/core/ -> repo


def available_weights() -> list[str]:
    """Names of the shipped weights."""
    d = weights_dir()
    if not d.is_dir():
        return []
    return sorted(p.name[: -len(SUFFIX)] for p in d.iterdir() if p.name.endswith(SUFFIX))


def _resolve_path(name_or_path: str | Path) -> Path:
    p = Path(name_or_path)
    if p.is_file():
        return p
    if isinstance(name_or_path, str) and os.sep not in name_or_path and not p.suffix:
        ref = weights_dir().joinpath(name_or_path + SUFFIX)
        if ref.is_file():
            return Path(str(ref))
        raise ValueError(f"no weights named {name_or_path!r}; available: "
                         f"{available_weights()} (or give a path to a .safetensors file)")
    raise ValueError(f"checkpoint file {str(name_or_path)!r} does not exist")


def stored_checksum(name_or_path: str | Path) -> str:
    """The SHA-256 of the tensors stored in a checkpoint's metadata ("" for files
    written before it was stored); no tensor is read."""
    return _read_header(_resolve_path(name_or_path))[0].get(CHECKSUM_KEY, "")


def weights_label(name_or_path: str | Path) -> str:
    """Which weights a result came from, for the header of a result file:
    ``"v20, sha256 34b7a0f5369b"`` (the version ``definet calibrate`` stored, or
    ``"unversioned"``, and the first 12 hex digits of the tensors' SHA-256)."""
    _, meta = read_metadata(name_or_path)
    digest = stored_checksum(name_or_path)[:12] or "not stored"
    return f"{meta.get('weights_version') or 'unversioned'}, sha256 {digest}"


def resolve_weights_path(name_or_path: str | Path) -> Path:
    """The checkpoint file of a weights name (``"default"``) or a path; ``ValueError``
    naming the available weights when there is none."""
    return _resolve_path(name_or_path)


def get_model(model: str | Path | DefiNet = "default",
              device: str | torch.device | None = None) -> DefiNet:
    """A ready model from a weights name, a path or an instance (moved to ``device``).

    Named and file weights are read once per process (again when the file changes) and
    every call returns a model of its own, so one caller's ``extend_elements``,
    fine-tuning or ``.to()`` never reaches another's. A ``DefiNet`` instance is the
    caller's own and is returned itself, moved to ``device``.
    """
    shared = shared_model(model, device)
    return shared if isinstance(model, DefiNet) else copy.deepcopy(shared)


def shared_model(model: str | Path | DefiNet = "default",
                 device: str | torch.device | None = None) -> DefiNet:
    """Like :func:`get_model`, but for read-only use: named and file weights give the
    process's one cached instance per device, in eval mode, without the copy (a copy
    of the default costs about as much as a forward pass of an 8x8 cell). Callers must
    not train, move or modify it; :class:`~ase_definet.DefiNetRelaxer` predicts with
    it and hands out a copy of its own (``relaxer.model``) on first access."""
    from .device import resolve_device

    dev = resolve_device(device)
    if isinstance(model, DefiNet):
        return _on(model, dev)
    return _shared(_file_key(model), str(dev))


def _on(model: DefiNet, dev: torch.device) -> DefiNet:
    """``model.to(dev)``, skipped when every tensor is there already (``Module.to``
    walks every submodule: milliseconds on a three-stage model)."""
    tensors = [*model.parameters(), *model.buffers()]
    if all(t.device == dev for t in tensors):
        return model
    return model.to(dev)


def _file_key(model: str | Path | DefiNet) -> tuple[str, int, int]:
    if not isinstance(model, (str, Path)):
        raise ValueError(f"model must be a weights name, a path or a DefiNet, got "
                         f"{type(model).__name__}")
    path = _resolve_path(model).resolve()
    stat = path.stat()
    return str(path), stat.st_mtime_ns, stat.st_size


@lru_cache(maxsize=8)
def _shared(key: tuple[str, int, int], device: str) -> DefiNet:
    """The cached model of a file on ``device``, in eval mode; never modified here."""
    return load_checkpoint(key[0], device)[0].eval()
