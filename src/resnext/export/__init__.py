"""Export: a model as ONNX, TorchScript or a safetensors model file, each checked on the spot.

Every exported file carries (ONNX metadata, TorchScript extra file) or sits beside
(``NAME.onnx.json``, ``NAME.pt.json``: the model file's JSON, see
:mod:`resnext.checkpoint.model_file`) everything a deployment needs: the architecture, the
class names and the evaluation preprocessing. Every target goes through one checked export
(:mod:`~resnext.export.checked`): the file is written as ``.partial``, read back by its own
runtime (onnxruntime, ``torch.jit.load``, ``load_checkpoint``), its logits compared with the
eager model's on random batches of two sizes, and only then put in place.

``onnx``/``onnxruntime`` are imported only on use, so ``import resnext`` stays light;
:mod:`~resnext.export.onnx_runtime` also runs exported files (sessions, metadata) for
inference.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import nn

from ..data.preprocess import Preprocess
from ..errors import ConfigError
from .checked import FORMATS, SUFFIXES, ExportReport, check_output_path
from .onnx_runtime import ONNX_KEYS, OnnxModel, load_onnx, onnx_session, parse_onnx_metadata
from .to_onnx import export_onnx
from .to_safetensors import export_safetensors
from .to_torchscript import TORCHSCRIPT_EXTRA, export_torchscript


def export_model(
    model: nn.Module,
    path: str | Path,
    fmt: str,
    *,
    classes: list[str],
    preprocess: Preprocess,
    source: Mapping[str, Any] | None = None,
    opset: int | None = None,
    check_batch: int = 2,
) -> ExportReport:
    """Export in ``fmt`` (onnx | torchscript | safetensors); ``opset`` is for ONNX only."""
    check_output_path(path, fmt)
    if opset is not None and fmt != "onnx":
        raise ConfigError(f"--opset applies to ONNX exports only, not {fmt}")
    kw: dict[str, Any] = {"classes": classes, "preprocess": preprocess, "source": source}
    if fmt == "onnx":
        return export_onnx(model, path, opset=opset, check_batch=check_batch, **kw)
    if fmt == "torchscript":
        return export_torchscript(model, path, check_batch=check_batch, **kw)
    return export_safetensors(model, path, check_batch=check_batch, **kw)


__all__ = [
    "FORMATS",
    "ONNX_KEYS",
    "SUFFIXES",
    "TORCHSCRIPT_EXTRA",
    "ExportReport",
    "OnnxModel",
    "check_output_path",
    "export_model",
    "export_onnx",
    "export_safetensors",
    "export_torchscript",
    "load_onnx",
    "onnx_session",
    "parse_onnx_metadata",
]
