"""ResNeXt (Xie et al., CVPR 2017) for PyTorch."""

from ._version import __version__
from .data import Preprocess
from .errors import ConfigError, DataError, ResnextError, TrainingError, WeightsError
from .inference import (
    Classifier,
    EvalOptions,
    EvalReport,
    evaluate,
    imagenet_classes,
    prepare_evaluation,
)
from .models import ResNeXt, convert_block_form, create_model, list_models, measure
from .runtime import RuntimeOptions

__all__ = [
    "Classifier",
    "ConfigError",
    "DataError",
    "EvalOptions",
    "EvalReport",
    "Preprocess",
    "ResNeXt",
    "ResnextError",
    "RuntimeOptions",
    "TrainingError",
    "WeightsError",
    "__version__",
    "convert_block_form",
    "create_model",
    "evaluate",
    "imagenet_classes",
    "list_models",
    "measure",
    "prepare_evaluation",
]
