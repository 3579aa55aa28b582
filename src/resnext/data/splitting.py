"""Carving a validation split from train where a dataset ships none."""

from __future__ import annotations

from typing import Any

from .base import Splits, Subset, TensorImages
from .digits import stratified_split


def carve_val(
    train: TensorImages,
    test: TensorImages | None,
    classes: list[str],
    mean: tuple[float, ...],
    std: tuple[float, ...],
    val_fraction: float,
    split_seed: int,
    info: dict[str, Any],
) -> Splits:
    """Hold out ``val_fraction`` of train per class (seeded) as val; test stays untouched."""
    if val_fraction <= 0:
        return Splits(train, None, test, classes, mean, std, {**info, "val": "none"})
    keep, val = stratified_split(train.labels, (val_fraction,), split_seed)
    note = f"{len(val)} images ({val_fraction:g}) carved from train, split_seed={split_seed}"
    return Splits(
        Subset(train, keep), Subset(train, val), test, classes, mean, std, {**info, "val": note}
    )
