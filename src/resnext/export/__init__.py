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

from .checked import FORMATS, SUFFIXES, ExportReport, Target, check_output_path
from .onnx_runtime import ONNX_KEYS, OnnxModel, load_onnx, onnx_session, parse_onnx_metadata
from .to_onnx import ONNX, export_onnx
from .to_safetensors import SAFETENSORS, export_safetensors
from .to_torchscript import TORCHSCRIPT, TORCHSCRIPT_EXTRA, export_torchscript

#: format name -> its target (``TARGETS[fmt].export(model, path, ...)``), in
#: :data:`FORMATS` order; :func:`check_output_path` refuses an unknown format by name.
TARGETS: dict[str, Target] = {t.format: t for t in (ONNX, TORCHSCRIPT, SAFETENSORS)}

__all__ = [
    "FORMATS",
    "ONNX_KEYS",
    "SUFFIXES",
    "TARGETS",
    "TORCHSCRIPT_EXTRA",
    "ExportReport",
    "OnnxModel",
    "Target",
    "check_output_path",
    "export_onnx",
    "export_safetensors",
    "export_torchscript",
    "load_onnx",
    "onnx_session",
    "parse_onnx_metadata",
]
