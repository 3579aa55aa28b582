"""What every importer returns: a model of ours with the preprocessing its authors evaluated
it with, its class names where the file holds them, and where it came from; and how it is
saved as a model file."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..checkpoint import save_model_file
from ..data.class_names import default_class_names
from ..data.preprocess import Preprocess
from ..models import ResNeXt


@dataclass
class Imported:
    """A model read from another ecosystem's file, ready to be saved in our format.

    ``classes`` None: the file names none (a 1000-output model gets the ImageNet-1k names).
    ``source``: provenance for the JSON beside the converted file, at least
    ``{"format": <importer name>, "file": <file name>}`` plus anything the importer noted
    (e.g. which EMA was taken, biases folded).
    """

    model: ResNeXt
    preprocess: Preprocess
    classes: list[str] | None = None
    source: dict[str, Any] = field(default_factory=dict)


def repairs(n_averaged: int | None, added: int) -> dict[str, int]:
    """Source entries for what an importer undid or filled in: the ``n_averaged`` count of
    a ``torch.optim.swa_utils.AveragedModel`` (not a weight, so set apart) and the BN
    ``num_batches_tracked`` counters added to a file saved before PyTorch 0.4.1."""
    found: dict[str, int] = {}
    if n_averaged is not None:
        found["n_averaged"] = n_averaged
    if added:
        found["num_batches_tracked_added"] = added
    return found


def save_imported(path: str | Path, imported: Imported) -> tuple[Path, Path]:
    """Write ``imported`` as a model file (``path`` .safetensors and the JSON beside it); a
    model whose file names no classes gets ImageNet-1k's names (1,000 outputs) or indices."""
    classes = imported.classes or default_class_names(imported.model.arch.num_classes)
    return save_model_file(
        path,
        imported.model,
        classes=classes,
        preprocess=imported.preprocess.to_dict(),
        source=imported.source,
    )
