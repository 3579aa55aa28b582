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
``preprocess``  what evaluation and prediction must apply: image_size, eval_resize,
                interpolation, mean, std
``metrics``     e.g. the best validation accuracy so far and its epoch
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import torch

from ..models import ResNeXt
from ..weights import WeightsError, extract_state_dict, load_checked, read_file

FORMAT = "resnext-checkpoint"
VERSION = 1


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> None:
    """Write ``payload`` to ``path`` atomically: a temporary file in the same folder, then
    ``os.replace``, so a crash mid-write never leaves a truncated checkpoint behind."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"format": FORMAT, "version": VERSION, **payload}
    _atomic_write(path, lambda f: torch.save(payload, f))


def copy_checkpoint(src: str | Path, dst: str | Path) -> None:
    """Copy a checkpoint file atomically (``best.pt`` from ``last.pt``, without re-serialising)."""
    src, dst = Path(src), Path(dst)

    def write(f: BinaryIO) -> None:
        with open(src, "rb") as g:
            shutil.copyfileobj(g, f, length=16 << 20)

    _atomic_write(dst, write)


def _atomic_write(path: Path, write: Callable[[BinaryIO], None]) -> None:
    """Write through a temporary file in the same folder, fsync, then ``os.replace``."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read one of our checkpoints (CPU tensors); a clear :class:`WeightsError` otherwise."""
    obj = read_file(path)
    if obj.get("format") != FORMAT:
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


def model_from_checkpoint(ckpt: dict[str, Any], use_ema: bool = False) -> ResNeXt:
    """Rebuild the model a checkpoint describes and load its (or its EMA's) weights."""
    arch = dict(ckpt["arch"])
    model = ResNeXt(**arch)
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
