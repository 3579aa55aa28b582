"""ONNX export: input ``images`` (N, C, S, S) with dynamic batch and image size, output
``logits``, our description in ``metadata_props``; checked in onnxruntime (CPU).

The torch.export-based (dynamo) exporter is tried first, the TorchScript-based one where it
fails or where an opset below its lowest is asked for; the report says which and why.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError, WeightsError
from .checked import Logits, Target, Written, first_line
from .onnx_runtime import INPUT_NAME, OUTPUT_NAME, onnx_metadata, onnx_session, require

_MIN_OPSET, _DYNAMO_MIN_OPSET = 7, 18  # lowest opset of torch's TorchScript-based / dynamo exporter


def _prepare(opset: int | None) -> None:
    """Both packages (the check needs onnxruntime) and an opset the installed onnx knows."""
    onnx = require("onnx")
    require("onnxruntime")
    newest = onnx.defs.onnx_opset_version()
    if opset is not None and not _MIN_OPSET <= opset <= newest:
        raise ConfigError(
            f"ONNX opset {opset} is out of range: {_MIN_OPSET} to {newest} (the installed onnx)"
        )


def _write(
    model: nn.Module, example: torch.Tensor, partial: Path, meta: dict, opset: int | None
) -> Written:
    onnx = require("onnx")
    exporter, notes = _onnx_export(model, example, partial, opset)
    proto = onnx.load(str(partial))
    for key, value in onnx_metadata(meta).items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(proto, str(partial))
    onnx.checker.check_model(str(partial))
    used = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
    if opset is not None and used != opset:
        raise WeightsError(f"asked for ONNX opset {opset} but the exporter wrote {used}")
    return Written(exporter=exporter, notes=notes, opset=used)


def _read_back(partial: Path, meta: dict[str, Any]) -> Logits:
    session = onnx_session(partial)

    def run(x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(session.run([OUTPUT_NAME], {INPUT_NAME: x.numpy()})[0])

    return run


ONNX = Target(
    format="onnx",
    what="ONNX",
    checked_with="onnxruntime",
    write=_write,
    read_back=_read_back,
    prepare=_prepare,
    takes_opset=True,
)
#: ``export_onnx(model, path, *, classes, preprocess, source=None, opset=None,
#: check_batch=2)``: ``path`` (.onnx) and ``NAME.onnx.json`` beside it, checked in
#: onnxruntime (CPU) against the eager model.
export_onnx = ONNX.export


def _onnx_export(
    model: nn.Module, example: torch.Tensor, path: Path, opset: int | None
) -> tuple[str, tuple[str, ...]]:
    """torch.export-based (dynamo) exporter first; the TorchScript-based one if it fails."""
    names = {"input_names": [INPUT_NAME], "output_names": [OUTPUT_NAME], "opset_version": opset}
    if opset is not None and opset < _DYNAMO_MIN_OPSET:
        # The dynamo exporter writes opset 18 and up; its down-conversion fails on these
        # models (a Reduce node's axes) and leaves 18, so go to the older exporter directly.
        reason = f"opset {opset} < {_DYNAMO_MIN_OPSET}, the dynamo exporter's lowest"
        return _legacy_onnx_export(model, example, path, names, reason)
    try:
        # Dynamic batch and image size: the same file serves another test crop (--crop 320).
        dims = {0: torch.export.Dim("batch", min=1)}
        dims |= {i: torch.export.Dim(n, min=16) for i, n in ((2, "height"), (3, "width"))}
        torch.onnx.export(
            model,
            (example,),
            str(path),
            dynamo=True,
            dynamic_shapes=(dims,),
            external_data=False,  # one self-contained file (models here are far below 2 GB)
            verbose=False,
            **names,
        )
        return "torch.onnx.export (dynamo)", ()
    except Exception as e:  # any exporter failure: try the other exporter, keep the reason
        reason = f"dynamo exporter failed ({type(e).__name__}: {first_line(e)})"
    return _legacy_onnx_export(model, example, path, names, reason)


def _legacy_onnx_export(
    model: nn.Module, example: torch.Tensor, path: Path, names: dict[str, Any], reason: str
) -> tuple[str, tuple[str, ...]]:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # "legacy exporter" notice
            torch.onnx.export(
                model,
                (example,),
                str(path),
                dynamo=False,
                dynamic_axes={
                    INPUT_NAME: {0: "batch", 2: "height", 3: "width"},
                    OUTPUT_NAME: {0: "batch"},
                },
                **names,
            )
    except Exception as e:
        raise WeightsError(
            f"ONNX export failed: {reason}; the TorchScript-based exporter failed "
            f"({type(e).__name__}: {first_line(e)})"
        ) from e
    return "torch.onnx.export (dynamo=False, TorchScript-based)", (reason,)
