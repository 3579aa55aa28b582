"""ONNX files at run time: an onnxruntime session, our metadata read back, and an exported
file (``resnext export --format onnx``) as a module the Classifier can hold.

The file carries its architecture, class names and preprocessing in ``metadata_props``
(written by :func:`~resnext.export.to_onnx.export_onnx`), so
``Classifier(*load_onnx("model.onnx"))`` needs nothing else. It runs in onnxruntime on the
CPU; ``onnx``/``onnxruntime`` are imported only on use, so ``import resnext`` stays light.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..data.preprocess import Preprocess
from ..errors import ConfigError, WeightsError
from ..models import Architecture
from .checked import first_line

#: ONNX ``metadata_props`` keys; each value is a JSON string.
ONNX_KEYS = ("resnext.arch", "resnext.classes", "resnext.preprocess", "resnext.source")
INPUT_NAME, OUTPUT_NAME = "images", "logits"


def require(name: str) -> Any:
    """Import ``onnx``/``onnxruntime`` on use, with the install hint if absent."""
    try:
        return importlib.import_module(name)
    except ImportError as e:
        raise ConfigError(
            f"ONNX export and loading need the {name} package, which is not installed ({e}); "
            "pip install onnx onnxscript onnxruntime"
        ) from e


def onnx_session(path: str | Path) -> Any:
    """An onnxruntime session (CPU provider, torch's thread count) of an ONNX file."""
    ort = require("onnxruntime")
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own exception types for a bad file
        raise WeightsError(f"{str(path)!r} is not a loadable ONNX file: {first_line(e)}") from e


def onnx_metadata(description: Mapping[str, Any]) -> dict[str, str]:
    """The ``metadata_props`` entries that carry a model description (JSON strings)."""
    return {key: json.dumps(description[key.removeprefix("resnext.")]) for key in ONNX_KEYS}


def parse_onnx_metadata(props: Mapping[str, str], path: str | Path) -> dict[str, Any]:
    """Our description back from an ONNX file's metadata (``{"arch", "classes",
    "preprocess", "source"}``); a clear error for an ONNX file that lacks it."""
    missing = [k for k in ONNX_KEYS[:3] if k not in props]
    if missing:
        raise WeightsError(
            f"{str(path)!r} is an ONNX file without resnext metadata ({', '.join(missing)} "
            "missing), so its classes and preprocessing are unknown; re-export it with "
            "`resnext export CHECKPOINT --format onnx`, or load the original weights with "
            "--model NAME --weights FILE"
        )
    try:
        return {k.removeprefix("resnext."): json.loads(props.get(k) or "{}") for k in ONNX_KEYS}
    except json.JSONDecodeError as e:
        raise WeightsError(f"{str(path)!r}: unreadable resnext metadata: {e}") from e


class OnnxModel(nn.Module):
    """An onnxruntime session (CPU provider) behind ``forward(images) -> logits``.

    It has no parameters; ``arch`` is the exported network's
    :class:`~resnext.models.Architecture`, read from the file, so ``arch.num_classes`` is the
    number of outputs. Inputs of any float dtype are run in float32.
    """

    def __init__(self, path: str | Path) -> None:
        super().__init__()
        self.path = Path(path)
        if not self.path.is_file():
            raise WeightsError(f"ONNX file {str(self.path)!r} does not exist")
        self.session = onnx_session(self.path)
        props = self.session.get_modelmeta().custom_metadata_map
        self.metadata: dict[str, Any] = parse_onnx_metadata(props, self.path)
        arch = dict(self.metadata["arch"])
        if arch.get("widths") is not None:
            arch["widths"] = tuple(arch["widths"])
        try:
            self.arch = Architecture(**arch)
        except TypeError as e:
            raise WeightsError(f"{str(self.path)!r}: unusable resnext.arch metadata: {e}") from e
        # int8 files (resnext quantize) say how they were made; None for fp32 exports.
        try:
            int8 = json.loads(props.get("resnext.int8") or "null")
        except json.JSONDecodeError as e:
            raise WeightsError(f"{str(self.path)!r}: unreadable resnext.int8 metadata: {e}") from e
        self.int8: dict[str, Any] | None = int8
        self.input_name = self.session.get_inputs()[0].name
        self.output_name = self.session.get_outputs()[0].name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(N, num_classes)`` of a preprocessed ``(N, C, S, S)`` batch (on the CPU)."""
        if x.device.type != "cpu":
            raise ConfigError(_CPU_ONLY)
        batch = x.detach().float().contiguous().numpy()
        (out,) = self.session.run([self.output_name], {self.input_name: batch})
        return torch.from_numpy(out)

    def to(self, *args: Any, **kwargs: Any) -> OnnxModel:  # type: ignore[override]
        """Stays on the CPU (the session's weights live in onnxruntime); another device is
        refused, a dtype is ignored (the file is float32)."""
        device = torch._C._nn._parse_to(*args, **kwargs)[0]  # how nn.Module.to reads them
        if device is not None and device.type != "cpu":
            raise ConfigError(_CPU_ONLY)
        return self

    def cuda(self, device: Any = None) -> OnnxModel:  # type: ignore[override]
        raise ConfigError(_CPU_ONLY)

    def extra_repr(self) -> str:
        kind = "int8" if self.int8 else "fp32"
        return f"{self.path.name!r}, onnxruntime CPU {kind}, {self.arch.num_classes} outputs"


_CPU_ONLY = (
    "an ONNX model runs in onnxruntime on the CPU here; use device='cpu' (--device cpu), "
    "or the checkpoint / safetensors model file for GPU inference"
)


def load_onnx(path: str | Path) -> tuple[OnnxModel, list[str], Preprocess]:
    """(model, class names, preprocessing) of an ONNX file written by ``resnext export``,
    the arguments of :class:`~resnext.inference.classifier.Classifier`; an ONNX file without
    our metadata is refused with what to do instead."""
    model = OnnxModel(path)
    classes = [str(c) for c in model.metadata["classes"]]
    if len(classes) != model.arch.num_classes:
        raise WeightsError(
            f"{str(path)!r}: {len(classes)} class names for {model.arch.num_classes} outputs"
        )
    return model, classes, Preprocess.from_dict(model.metadata["preprocess"])
