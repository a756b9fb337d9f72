"""Save and load DefiNet weights without unpickling code.

A checkpoint is one ``.safetensors`` file: the ``state_dict`` tensors plus JSON metadata
(format version, the :class:`~ase_definet.model.DefiNetConfig` including the graph
settings and the element list, a description of the training data, metrics, ...).
Named weights live in the package folder ``ase_definet/weights`` (the repository's
``weights/``), each with a model card ``NAME.md``.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .model import DefiNet, DefiNetConfig

logger = logging.getLogger(__name__)

FORMAT = "ase_definet.checkpoint/1"
SUFFIX = ".safetensors"


def save_checkpoint(model: DefiNet, path: str | Path, metadata: dict[str, Any] | None = None
                    ) -> Path:
    """Write ``model`` and ``metadata`` to ``path`` atomically (temp file + rename)."""
    path = Path(path)
    meta = {"format": FORMAT, "config": json.dumps(model.config.to_dict()),
            "metadata": json.dumps(metadata or {}, default=str)}
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=meta)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the usual file mode
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def read_metadata(path: str | Path) -> tuple[DefiNetConfig, dict[str, Any]]:
    """Config and metadata of a checkpoint file, without loading the tensors."""
    from safetensors import safe_open

    path = _resolve_path(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except (SafetensorError, OSError) as err:
        raise ValueError(f"{path} is not a readable DefiNet checkpoint: {err}") from None
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path} is not a DefiNet checkpoint (format {meta.get('format')!r})")
    return DefiNetConfig.from_dict(json.loads(meta["config"])), json.loads(meta["metadata"])


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu"
                    ) -> tuple[DefiNet, dict[str, Any]]:
    """Rebuild the model saved in ``path`` (a file or a weights name); returns
    ``(model, metadata)``. The model is in eval mode."""
    path = _resolve_path(path)
    config, meta = read_metadata(path)
    model = DefiNet(config)
    state = load_file(str(path), device="cpu")
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(f"{path}: weights do not fit the saved config "
                         f"(missing {missing[:5]}, unexpected {unexpected[:5]})")
    model.metadata = meta
    return model.to(device).eval(), meta


def weights_dir():
    """The folder of named weights shipped with the package (the repository's
    ``weights/``, installed as ``ase_definet.weights``)."""
    try:
        return resources.files("ase_definet.weights")
    except ModuleNotFoundError:  # running from a source tree that is not installed
        return Path(__file__).resolve().parent.parent / "weights"


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


@lru_cache(maxsize=8)
def _cached(path: str, device: str) -> DefiNet:
    return load_checkpoint(path, device)[0]


def get_model(model: str | Path | DefiNet = "default",
              device: str | torch.device | None = None) -> DefiNet:
    """A ready model from a weights name, a path or an instance (moved to ``device``).

    Named and file weights are loaded once per process and device and shared.
    """
    from .device import resolve_device

    dev = resolve_device(device)
    if isinstance(model, DefiNet):
        return model.to(dev)
    if not isinstance(model, (str, Path)):
        raise ValueError(f"model must be a weights name, a path or a DefiNet, got "
                         f"{type(model).__name__}")
    path = _resolve_path(model).resolve()
    return _cached(str(path), str(dev))
