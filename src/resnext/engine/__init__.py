"""Training engine: it receives a model and data; it never builds them."""

from .distributed import DistInfo, barrier, cleanup, init_distributed
from .ema import ModelEma
from .optim import build_optimizer, build_scheduler, lr_factor_fn, scaled_lr
from .progress import FitResult
from .resume import RESUME_MAY_CHANGE, check_resume_compatible
from .rng import get_rng_state, seed_everything, set_rng_state
from .setup import Resume, RunSetup
from .trainer import NonFiniteLossError, Trainer

__all__ = [
    "RESUME_MAY_CHANGE",
    "DistInfo",
    "FitResult",
    "ModelEma",
    "NonFiniteLossError",
    "Resume",
    "RunSetup",
    "Trainer",
    "barrier",
    "build_optimizer",
    "build_scheduler",
    "check_resume_compatible",
    "cleanup",
    "get_rng_state",
    "init_distributed",
    "lr_factor_fn",
    "scaled_lr",
    "seed_everything",
    "set_rng_state",
]
