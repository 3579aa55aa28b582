"""Inference: the classifier, the one metric loop and evaluation, for eval, predict and the API.

Nothing here imports the training engine: checkpoints are read through
:mod:`resnext.checkpoint`, preprocessing through :mod:`resnext.data`.
"""

from .classes import default_class_names, imagenet_classes
from .classifier import Classifier, ImageError, model_from_weights
from .evaluate import EvalOptions, Evaluation, Member, evaluate, prepare_evaluation
from .metrics import EvalReport, EvalResult, run_metrics

__all__ = [
    "Classifier",
    "EvalOptions",
    "EvalReport",
    "EvalResult",
    "Evaluation",
    "ImageError",
    "Member",
    "default_class_names",
    "evaluate",
    "imagenet_classes",
    "model_from_weights",
    "prepare_evaluation",
    "run_metrics",
]
