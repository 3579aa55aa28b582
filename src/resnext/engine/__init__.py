"""Training engine: it receives a model and data; it never builds them."""

from .checkpoint import copy_checkpoint, load_checkpoint, model_from_checkpoint, save_checkpoint
from .distributed import DistInfo, cleanup, init_distributed, resolve_device
from .ema import ModelEma
from .optim import build_optimizer, build_scheduler, lr_factor_fn, scaled_lr
from .rng import get_rng_state, seed_everything, set_rng_state
from .trainer import (
    FitResult,
    NonFiniteLossError,
    Trainer,
    amp_dtype,
    configure_torch,
    evaluate_split,
)

__all__ = [
    "DistInfo",
    "FitResult",
    "ModelEma",
    "NonFiniteLossError",
    "Trainer",
    "amp_dtype",
    "build_optimizer",
    "build_scheduler",
    "cleanup",
    "configure_torch",
    "copy_checkpoint",
    "evaluate_split",
    "get_rng_state",
    "init_distributed",
    "load_checkpoint",
    "lr_factor_fn",
    "model_from_checkpoint",
    "resolve_device",
    "save_checkpoint",
    "scaled_lr",
    "seed_everything",
    "set_rng_state",
]
