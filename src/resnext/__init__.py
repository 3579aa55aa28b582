"""ResNeXt (Xie et al., CVPR 2017) for PyTorch."""

from .data import Preprocess
from .errors import ConfigError, DataError, ResnextError, TrainingError, WeightsError
from .inference import Classifier, EvalReport, evaluate, imagenet_classes
from .models import ResNeXt, convert_block_form, create_model, list_models, measure

__version__ = "0.1.0"

__all__ = [
    "Classifier",
    "ConfigError",
    "DataError",
    "EvalReport",
    "Preprocess",
    "ResNeXt",
    "ResnextError",
    "TrainingError",
    "WeightsError",
    "__version__",
    "convert_block_form",
    "create_model",
    "evaluate",
    "imagenet_classes",
    "list_models",
    "measure",
]
