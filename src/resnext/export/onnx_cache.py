"""ONNX exports made on the fly for the onnxruntime back-end, cached by a hash of the weights
so that a model is exported (and checked against eager) once, not at every start."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch
from torch import nn

from ..data.preprocess import Preprocess
from .onnx_runtime import OnnxModel
from .to_onnx import export_onnx


def cache_dir() -> Path:
    """Where exports made for the onnxruntime back-end are kept: ``$RESNEXT_CACHE/onnx``, or
    ``$XDG_CACHE_HOME/resnext/onnx`` (default ``~/.cache/resnext/onnx``)."""
    root = os.environ.get("RESNEXT_CACHE")
    if root:
        return Path(root) / "onnx"
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "resnext" / "onnx"


def weights_digest(model: nn.Module) -> str:
    """A hash of the architecture record and every tensor (name, shape, dtype, bytes)."""
    h = hashlib.sha256()
    arch = getattr(model, "arch", None)
    h.update(json.dumps(arch.to_dict() if arch is not None else None, sort_keys=True).encode())
    for name, t in model.state_dict().items():
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def cached_onnx_model(model: nn.Module, *, classes: list[str], preprocess: Preprocess) -> OnnxModel:
    """``model`` running in onnxruntime: its checked export from the cache, exported there
    first if these weights have none yet. A cache that cannot be written raises the export's
    :class:`~resnext.errors.ConfigError` or ``OSError``."""
    arch = getattr(model, "arch", None)
    stem = arch.name if arch is not None else "model"
    path = cache_dir() / f"{stem}-{weights_digest(model)[:20]}.onnx"
    if not path.is_file():
        export_onnx(
            model.eval(),
            path,
            classes=classes,
            preprocess=preprocess,
            source={"format": "onnxruntime back-end cache"},
        )
    return OnnxModel(path)
