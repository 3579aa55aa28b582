"""ResNeXt (Xie et al., CVPR 2017) for PyTorch."""

from .api import Classifier
from .models import ResNeXt, convert_block_form, create_model, list_models, measure

__version__ = "0.1.0"

__all__ = [
    "Classifier",
    "ResNeXt",
    "__version__",
    "convert_block_form",
    "create_model",
    "list_models",
    "measure",
]
