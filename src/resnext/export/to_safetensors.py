"""safetensors export: a model file (``NAME.safetensors`` + ``NAME.json``, see
:mod:`resnext.checkpoint.model_file`), checked by loading it back as every command does
(``load_checkpoint`` and ``model_from_checkpoint``): the logits must be bit for bit the eager
model's."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..checkpoint import load_checkpoint, model_from_checkpoint, sidecar_path
from ..checkpoint.model_file import write_model_file
from ..checkpoint.writing import cpu_state_dict
from .checked import Logits, Target, Written


def _write(
    model: nn.Module, example: torch.Tensor, partial: Path, meta: dict, opset: int | None
) -> Written:
    write_model_file(partial, cpu_state_dict(model), meta)
    return Written(exporter="save_model_file")


def _read_back(partial: Path, meta: dict[str, Any]) -> Logits:
    return model_from_checkpoint(load_checkpoint(partial)).eval()


SAFETENSORS = Target(
    format="safetensors",
    what="model file",
    checked_with="load_checkpoint",
    write=_write,
    read_back=_read_back,
    sidecar=sidecar_path,
    exact=True,
    partial_extras=lambda partial: [sidecar_path(partial)],
)
#: ``export_safetensors(model, path, *, classes, preprocess, source=None, check_batch=2)``:
#: the model file ``path`` (.safetensors) and ``NAME.json``, checked exactly.
export_safetensors = SAFETENSORS.export
