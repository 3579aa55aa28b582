"""The model file: weights as safetensors plus a small JSON beside them.

What ``resnext convert`` and ``resnext export --format safetensors`` write, and what every
command and :class:`~resnext.Classifier` load by path: ``NAME.safetensors`` (the state dict,
torchvision's parameter names, loadable by any ecosystem) and ``NAME.json``::

    {"format": "resnext-model", "version": 1,
     "arch": {...},            # resnext.models.Architecture: rebuilds the network
     "classes": [...],         # class names in output order
     "preprocess": {...},      # resnext.data.Preprocess: what evaluation applies
     "source": {...}}          # where the weights came from (format, file, notes)

The JSON is data only (no code), the weights are safetensors: nothing is unpickled.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import WeightsError
from .records import MODEL_FORMAT, VERSION, checkpoint_record, model_description
from .safe_read import read_file
from .writing import atomic_write, cpu_state_dict, write_json


def sidecar_path(path: str | Path) -> Path:
    """The JSON beside a weights file: ``model.safetensors`` -> ``model.json``."""
    return Path(path).with_suffix(".json")


def save_model_file(
    path: str | Path,
    model: nn.Module,
    *,
    classes: list[str],
    preprocess: dict[str, Any],
    source: dict[str, Any] | None = None,
) -> tuple[Path, Path]:
    """Write ``path`` (.safetensors) and the JSON beside it; returns both paths."""
    path = Path(path)
    if path.suffix != ".safetensors":
        raise WeightsError(f"a model file is written as .safetensors, got {str(path)!r}")
    meta = model_description(model, classes=classes, preprocess=preprocess, source=source)
    return write_model_file(path, cpu_state_dict(model), meta)


def write_model_file(
    path: Path, state: dict[str, torch.Tensor], description: dict[str, Any]
) -> tuple[Path, Path]:
    """Write ``state`` as ``path`` (.safetensors) and ``description`` (the JSON of
    :func:`~resnext.checkpoint.records.model_description`) beside it; returns both paths."""
    from safetensors.torch import save

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda f: f.write(save(state)))
    side = sidecar_path(path)
    write_json(side, description)
    return path, side


def is_model_file(path: str | Path) -> bool:
    """A .safetensors file with our JSON beside it."""
    p = Path(path)
    return p.suffix == ".safetensors" and sidecar_path(p).is_file()


def load_model_file(path: str | Path) -> dict[str, Any]:
    """A model file as a checkpoint-shaped dict (no training state), for every loader."""
    p = Path(path)
    side = sidecar_path(p)
    try:
        meta = json.loads(side.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise WeightsError(f"{str(side)!r} (beside {p.name}) is not readable JSON: {e}") from e
    if not isinstance(meta, dict) or meta.get("format") != MODEL_FORMAT:
        raise WeightsError(
            f"{str(side)!r} is not a resnext model description (format {MODEL_FORMAT!r})"
        )
    missing = [k for k in ("arch", "classes", "preprocess") if not meta.get(k)]
    if missing:
        raise WeightsError(f"{str(side)!r} lacks {', '.join(missing)}")
    kinds = {"version": int, "arch": dict, "classes": list, "preprocess": dict}
    wrong = [k for k, kind in kinds.items() if not isinstance(meta.get(k), kind)]
    if wrong:
        raise WeightsError(f"{str(side)!r}: {', '.join(wrong)} of the wrong type")
    if meta["version"] > VERSION:
        raise WeightsError(f"{str(side)!r} was written by a newer resnext; upgrade the package")
    record = checkpoint_record(
        arch=meta["arch"],
        model=read_file(p),
        classes=list(meta["classes"]),
        preprocess=dict(meta["preprocess"]),
        metrics={"selected": "model"},
    )
    return {**record, "source": dict(meta.get("source") or {})}
