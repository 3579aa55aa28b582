"""Datasets, the paper's transforms, and seeded loaders."""

from ..errors import DataError
from .base import SeededSampler, Splits, TensorImages, TransformedDataset
from .build import READERS, build_raw_splits, build_splits, make_loader, set_loader_epoch
from .digits import DIGITS_CLASSES, load_digits_images
from .images import BadFileReport, BadImageError, ImageFiles, bad_file_report, load_image
from .preprocess import Preprocess, TenCropTransform
from .transforms import IMAGENET_MEAN, IMAGENET_STD, Lighting, eval_transform, train_transform

__all__ = [
    "DIGITS_CLASSES",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "READERS",
    "BadFileReport",
    "BadImageError",
    "DataError",
    "ImageFiles",
    "Lighting",
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
