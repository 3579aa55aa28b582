"""An exported ONNX file (``resnext export --format onnx``) as a module the Classifier can hold.

The file carries its architecture, class names and preprocessing in ``metadata_props``
(see :mod:`resnext.weights.export`), so ``Classifier(*load_onnx("model.onnx"))`` needs
nothing else. It runs in onnxruntime on the CPU; onnxruntime is imported only on use.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..data.preprocess import Preprocess
from ..errors import ConfigError, WeightsError
from ..models import Architecture
from ..weights.export import onnx_session, parse_onnx_metadata


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
        return f"{self.path.name!r}, onnxruntime CPU, {self.arch.num_classes} outputs"


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
