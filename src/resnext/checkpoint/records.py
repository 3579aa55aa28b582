"""What a checkpoint and a model file hold, written down once.

A checkpoint (what ``resnext train`` writes) and a model file's JSON (what ``resnext
convert`` and ``resnext export`` write beside the weights) share one description of the
network: ``arch``, ``classes``, ``preprocess``. :func:`model_description` builds the model
file's JSON, :func:`checkpoint_record` the checkpoint's dict; every writer and reader of
either goes through them, so a key is named in one place.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

from ..errors import WeightsError

CHECKPOINT_FORMAT = "resnext-checkpoint"
MODEL_FORMAT = "resnext-model"
VERSION = 1
#: The checkpoint entries that only resume needs; None in an inference-only checkpoint.
TRAINING_KEYS = ("optimizer", "scheduler", "scaler", "epoch", "epoch_step", "step", "rng")


def model_description(
    model: nn.Module,
    *,
    classes: list[str],
    preprocess: Mapping[str, Any],
    source: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The model file's JSON (format, version, arch, classes, preprocess, source) for
    ``model``; refuses a model without an ``arch`` record or a wrong number of class names.

    ``preprocess`` is the record of :class:`~resnext.data.Preprocess` (its ``to_dict()``).
    """
    arch = getattr(model, "arch", None)
    if arch is None or not hasattr(arch, "to_dict"):
        raise WeightsError(
            "only resnext models (with an .arch record) can be saved as model files or exported"
        )
    num_out = getattr(arch, "num_classes", None)
    if num_out is not None and len(classes) != num_out:
        raise WeightsError(f"{len(classes)} class names for a model with {num_out} outputs")
    return {
        "format": MODEL_FORMAT,
        "version": VERSION,
        "arch": arch.to_dict(),
        "classes": list(classes),
        "preprocess": dict(preprocess),
        "source": dict(source or {}),
    }


def checkpoint_record(
    *,
    arch: dict[str, Any] | None,
    model: Mapping[str, Any],
    classes: list[str],
    preprocess: Mapping[str, Any],
    ema: Mapping[str, Any] | None = None,
    training: Mapping[str, Any] | None = None,
    config: dict[str, Any] | None = None,
    metrics: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """A checkpoint's dict (see :mod:`resnext.checkpoint.checkpoints` for the keys).

    ``training`` holds the keys that resume needs (:data:`TRAINING_KEYS`); those it lacks
    are None, unknown ones are an error.
    """
    training = dict(training or {})
    unknown = sorted(set(training) - set(TRAINING_KEYS))
    if unknown:
        raise ValueError(f"unknown training-state keys {unknown}; expected {TRAINING_KEYS}")
    return {
        "format": CHECKPOINT_FORMAT,
        "version": VERSION,
        "arch": arch,
        "model": model,
        "ema": ema,
        **{k: training.get(k) for k in TRAINING_KEYS},
        "config": config,
        "classes": list(classes),
        "preprocess": dict(preprocess),
        "metrics": dict(metrics or {}),
    }
