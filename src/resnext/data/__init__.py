"""Datasets, the paper's transforms, and seeded loaders.

The dataset builders and the train transforms (which import torchvision) load on first
use, so ``from resnext.data import Preprocess`` stays light for predicting and serving.
"""

import importlib
from typing import TYPE_CHECKING, Any

from ..errors import DataError
from .base import LoaderOrder, SeededSampler, Splits, TensorImages, TransformedDataset
from .digits import DIGITS_CLASSES, load_digits_images
from .eval_transforms import IMAGENET_MEAN, IMAGENET_STD, EvalTransform, eval_transform
from .images import BadFileReport, BadImageError, ImageFiles, bad_file_report, load_image
from .preprocess import Preprocess, TenCropTransform

if TYPE_CHECKING:  # what type checkers and IDEs see; at run time __getattr__ loads them
    from .build import READERS, build_raw_splits, build_splits, make_loader, set_loader_epoch
    from .transforms import Lighting, train_transform

# name -> submodule, imported on first access (PEP 562)
_LAZY = {
    "READERS": "build",
    "build_raw_splits": "build",
    "build_splits": "build",
    "make_loader": "build",
    "set_loader_epoch": "build",
    "Lighting": "transforms",
    "train_transform": "transforms",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])


__all__ = [
    "DIGITS_CLASSES",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "READERS",
    "BadFileReport",
    "BadImageError",
    "DataError",
    "EvalTransform",
    "ImageFiles",
    "Lighting",
    "LoaderOrder",
    "Preprocess",
    "SeededSampler",
    "Splits",
    "TenCropTransform",
    "TensorImages",
    "TransformedDataset",
    "bad_file_report",
    "build_raw_splits",
    "build_splits",
    "eval_transform",
    "load_digits_images",
    "load_image",
    "make_loader",
    "set_loader_epoch",
    "train_transform",
]
