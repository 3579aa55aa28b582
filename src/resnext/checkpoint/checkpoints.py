"""Checkpoints: written atomically, read without unpickling arbitrary objects.

A checkpoint is a dict of tensors and plain Python values (so ``weights_only=True``
reads it) with these keys:

``format``      "resnext-checkpoint"; ``version``: 1
``arch``        :class:`~resnext.models.Architecture` as a dict (rebuilds the model)
``model``       the model's state dict; ``ema``: the EMA's state dict or None
``optimizer``, ``scheduler``, ``scaler``   their state dicts (None where unused)
``epoch``       epochs completed; ``epoch_step``: batches done in the epoch in progress
``step``        optimizer steps done
``rng``         torch / numpy / python (/ cuda) RNG states
``config``      the resolved run config (``Config.to_dict()``)
``classes``     class names, in label order
``preprocess``  what evaluation and prediction must apply (the record of
                :class:`~resnext.data.Preprocess`: image_size, eval_resize, interpolation,
                mean, std)
``metrics``     e.g. the best validation accuracy so far and its epoch, and ``selected``
                ("ema" or "model"): the weights the run selected and tested

Only ``arch``, ``model``, ``classes`` and ``preprocess`` are needed to rebuild the model;
the training state (optimizer to rng) is None in a checkpoint made for inference only.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, BinaryIO

import torch
from torch import nn

from ..errors import WeightsError
from ..models import ResNeXt
from .checked_load import built_to_load, load_checked
from .model_file import is_model_file, load_model_file
from .records import CHECKPOINT_FORMAT, VERSION, checkpoint_record
from .safe_read import extract_state_dict, read_file
from .writing import atomic_write


def make_checkpoint(
    model: nn.Module,
    *,
    classes: list[str],
    preprocess: dict[str, Any],
    config: dict[str, Any] | None = None,
    ema: dict[str, torch.Tensor] | None = None,
    training: dict[str, Any] | None = None,
    metrics: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The checkpoint payload: what ``resnext train`` writes, and what a test or a converter
    writes for a model it built. ``training`` holds the keys that resume needs (optimizer,
    scheduler, scaler, epoch, epoch_step, step, rng); unknown ones are an error."""
    arch = getattr(model, "arch", None)
    return checkpoint_record(
        arch=arch.to_dict() if arch is not None else None,
        model=model.state_dict(),
        ema=ema,
        training=training,
        config=config,
        classes=classes,
        preprocess=preprocess,
        metrics=metrics,
    )


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> str:
    """Write ``payload`` to ``path`` atomically: a temporary file in the same folder, then
    ``os.replace``, so a crash mid-write never leaves a truncated checkpoint behind. Returns
    the file's SHA-256 (hex); a full disk raises :class:`~.writing.DiskFullError`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"format": CHECKPOINT_FORMAT, "version": VERSION, **payload}
    return atomic_write(path, lambda f: torch.save(payload, f))


def copy_checkpoint(src: str | Path, dst: str | Path) -> str:
    """Copy a checkpoint file atomically (``best.pt`` from ``last.pt``, without re-serialising);
    returns the copy's SHA-256 (hex)."""
    src, dst = Path(src), Path(dst)

    def write(f: BinaryIO) -> None:
        with open(src, "rb") as g:
            shutil.copyfileobj(g, f, length=16 << 20)

    return atomic_write(dst, write)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read one of our checkpoints (CPU tensors), or a model file (``.safetensors`` with our
    JSON beside it, see :mod:`resnext.checkpoint.model_file`) in the same shape; a clear
    :class:`WeightsError` otherwise."""
    if is_model_file(path):
        return load_model_file(path)
    obj = read_file(path)
    if obj.get("format") != CHECKPOINT_FORMAT:
        raise WeightsError(
            f"{str(path)!r} is not a resnext training checkpoint (no 'format' marker); "
            "for a plain state dict (torchvision, timm, ...) give it as weights with a model name"
        )
    if obj.get("version", 0) > VERSION:
        raise WeightsError(
            f"{str(path)!r} was written by a newer resnext (checkpoint version "
            f"{obj['version']} > {VERSION}); upgrade the package"
        )
    return obj


def selected_ema(ckpt: dict[str, Any]) -> bool:
    """Whether the training run selected (and tested) the EMA weights of this checkpoint."""
    metrics = ckpt.get("metrics") or {}
    return metrics.get("selected") == "ema" and ckpt.get("ema") is not None


def model_from_checkpoint(ckpt: dict[str, Any], use_ema: bool = False) -> ResNeXt:
    """Rebuild the model a checkpoint describes and load its (or its EMA's) weights."""
    if not isinstance(ckpt.get("arch"), dict):
        raise WeightsError(
            "the checkpoint has no architecture record ('arch'), so the model cannot be rebuilt"
        )
    try:  # tensors left uninitialised: the checked load below fills every one
        model = built_to_load(lambda: ResNeXt(**ckpt["arch"]))
    except (TypeError, ValueError) as e:
        raise WeightsError(f"the checkpoint's architecture record is not usable: {e}") from e
    if use_ema:
        if ckpt.get("ema") is None:
            raise WeightsError(
                "this checkpoint has no EMA weights (the run had train.ema_decay unset)"
            )
        state = ckpt["ema"]
    else:
        state = ckpt["model"]
    load_checked(model, extract_state_dict(state))
    return model
