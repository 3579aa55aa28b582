"""TorchScript export: the traced model with our description as the archive's extra file
``resnext.json`` (and the same JSON beside it); checked with ``torch.jit.load``.

TorchScript is deprecated in PyTorch (a FutureWarning on every call), but it is still the
format asked for here; the report says so.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import WeightsError
from .checked import Logits, Target, Written

TORCHSCRIPT_EXTRA = "resnext.json"  # the TorchScript archive's extra file holding the JSON
_DEPRECATED = ("TorchScript is deprecated in PyTorch; ONNX or safetensors will outlast it",)


@contextmanager
def _jit() -> Iterator[None]:
    """torch.jit's deprecation FutureWarning silenced (see the module docstring)."""
    with warnings.catch_warnings(), torch.no_grad():
        warnings.filterwarnings("ignore", category=FutureWarning, message=r".*torch\.jit")
        yield


def _write(
    model: nn.Module, example: torch.Tensor, partial: Path, meta: dict, opset: int | None
) -> Written:
    with _jit():
        traced = torch.jit.trace(model, (example,), check_trace=False)  # checked after
        text = json.dumps(meta, indent=2)
        torch.jit.save(traced, str(partial), _extra_files={TORCHSCRIPT_EXTRA: text})
    return Written(exporter="torch.jit.trace", notes=_DEPRECATED)


def _read_back(partial: Path, meta: dict[str, Any]) -> Logits:
    extra = {TORCHSCRIPT_EXTRA: ""}
    with _jit():
        loaded = torch.jit.load(str(partial), map_location="cpu", _extra_files=extra)
    if json.loads(extra[TORCHSCRIPT_EXTRA]) != meta:
        raise WeightsError(
            f"the TorchScript file's {TORCHSCRIPT_EXTRA} read back differs from what was "
            "written; nothing was kept"
        )
    return loaded


TORCHSCRIPT = Target(
    format="torchscript",
    what="TorchScript",
    checked_with="torch.jit.load",
    write=_write,
    read_back=_read_back,
)
#: ``export_torchscript(model, path, *, classes, preprocess, source=None, check_batch=2)``:
#: ``path`` (.pt/.ts) and ``NAME.pt.json`` beside it, checked against eager.
export_torchscript = TORCHSCRIPT.export
