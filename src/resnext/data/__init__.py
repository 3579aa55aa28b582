"""Datasets, the paper's transforms, and seeded loaders."""

from .base import SeededSampler, Splits, TensorImages, TransformedDataset
from .build import READERS, build_raw_splits, build_splits, make_loader
from .digits import DIGITS_CLASSES, load_digits_images
from .transforms import IMAGENET_MEAN, IMAGENET_STD, Lighting, eval_transform, train_transform

__all__ = [
    "DIGITS_CLASSES",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "READERS",
    "Lighting",
    "SeededSampler",
    "Splits",
    "TensorImages",
    "TransformedDataset",
    "build_raw_splits",
    "build_splits",
    "eval_transform",
    "load_digits_images",
    "make_loader",
    "train_transform",
]
