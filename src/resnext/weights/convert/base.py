"""What every importer returns: a model of ours with the preprocessing its authors evaluated
it with, its class names where the file holds them, and where it came from."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ...data.preprocess import Preprocess
from ...models import ResNeXt


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
