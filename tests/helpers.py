"""What the tests share: the tiny model's constants and the one hand-made checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from resnext.checkpoint import make_checkpoint, save_checkpoint
from resnext.config import Config, from_dict
from resnext.data import DIGITS_CLASSES, Preprocess
from resnext.data.digits import DIGITS_MEAN, DIGITS_STD
from resnext.models import create_model

TINY = {"widths": (16, 32, 64), "stem_width": 16}  # a ResNeXt-29 that runs in milliseconds
# The preprocessing `resnext train` stores for the built-in digits (the demo's data config).
DIGITS_PRE = Preprocess.from_config(Config().data, DIGITS_MEAN, DIGITS_STD).to_dict()


def tiny_checkpoint(
    path: Path,
    *,
    seed: int = 0,
    num_classes: int = 10,
    classes: list[str] | None = None,
    data: dict[str, Any] | None = None,
    ema: dict[str, torch.Tensor] | None = None,
    metrics: dict[str, Any] | None = None,
) -> Path:
    """A checkpoint of a tiny ResNeXt-29 (weights seeded by ``seed``), written by the same
    ``make_checkpoint``/``save_checkpoint`` that ``resnext train`` uses. Digits classes and
    preprocessing by default; ``data`` is the stored data config section."""
    torch.manual_seed(seed)
    model = create_model("resnext29_2x4d", num_classes=num_classes, **TINY)
    if classes is None:
        classes = list(DIGITS_CLASSES) if num_classes == 10 else []
    payload = make_checkpoint(
        model,
        classes=classes,
        preprocess=DIGITS_PRE,
        config=from_dict({"data": data or {"name": "digits"}}).to_dict(),
        ema=ema,
        training={"epoch": 1, "epoch_step": 0, "step": 1},
        metrics=metrics,
    )
    save_checkpoint(path, payload)
    return path


def randomise_bn(model: torch.nn.Module, seed: int = 0) -> None:
    """BN statistics and affine parameters away from their initial values (so that folding
    them into the convolutions is really exercised)."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.3)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.3)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.3)
