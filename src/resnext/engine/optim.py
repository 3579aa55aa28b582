"""SGD with optional BN/bias weight-decay exemption, and per-step learning-rate schedules."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from ..config import ConfigError, OptimConfig, ScheduleConfig
from ..registry_names import SCHEDULES


def scaled_lr(cfg: OptimConfig, total_batch: int) -> float:
    """The linear scaling rule (Goyal et al. 2017; PAPER.md: lr = 0.1 * batch / 256).

    ``total_batch`` is the images per optimizer step over all processes:
    ``batch_size * accumulate_steps * world_size``.
    """
    if cfg.lr_base_batch is None:
        return cfg.lr
    if cfg.lr_base_batch < 1:
        raise ConfigError(f"optim.lr_base_batch must be at least 1, got {cfg.lr_base_batch}")
    return cfg.lr * total_batch / cfg.lr_base_batch


def build_optimizer(model: nn.Module, cfg: OptimConfig, lr: float) -> torch.optim.SGD:
    """SGD over ``model``'s trainable parameters, in one or two weight-decay groups.

    With ``no_decay_bn_bias`` every 1-D parameter (BN weights and biases, the fc bias)
    goes to a group with no weight decay, as in Goyal et al. 2017; the paper decays all.
    """
    if cfg.name != "sgd":
        raise ConfigError(f"optim.name must be sgd (the paper's optimizer), got {cfg.name!r}")
    if cfg.nesterov and cfg.momentum <= 0:
        raise ConfigError("optim.nesterov needs optim.momentum > 0 (e.g. 0.9)")
    if cfg.momentum < 0 or cfg.weight_decay < 0:
        raise ConfigError(
            f"optim.momentum and optim.weight_decay must be >= 0, got {cfg.momentum} "
            f"and {cfg.weight_decay}"
        )
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if cfg.no_decay_bn_bias and p.ndim <= 1 else decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return torch.optim.SGD(
        groups, lr=lr, momentum=cfg.momentum, nesterov=cfg.nesterov, weight_decay=cfg.weight_decay
    )


def lr_factor_fn(
    cfg: ScheduleConfig, steps_per_epoch: int, total_steps: int, base_lr: float
) -> Callable[[int], float]:
    """The multiplier of the base lr before optimizer step ``step`` (0-based).

    Warm-up rises linearly from ``warmup_start_factor`` to 1 over ``warmup_epochs``;
    ``step`` and ``multistep`` decay at whole-epoch boundaries (as the paper's recipes
    are written); ``cosine`` anneals per step from the end of warm-up to ``min_lr``.
    """
    if steps_per_epoch < 1:
        raise ValueError(f"steps_per_epoch must be at least 1, got {steps_per_epoch}")
    if cfg.name not in SCHEDULES:
        raise ConfigError(f"schedule.name must be one of {', '.join(SCHEDULES)}, got {cfg.name!r}")
    if cfg.name == "step" and cfg.step_size < 1:
        raise ConfigError(f"schedule.step_size must be at least 1 epoch, got {cfg.step_size}")
    if cfg.warmup_epochs < 0 or not 0.0 <= cfg.warmup_start_factor <= 1.0:
        raise ConfigError(
            "schedule.warmup_epochs must be >= 0 and schedule.warmup_start_factor in [0, 1]"
        )
    warmup = round(cfg.warmup_epochs * steps_per_epoch)
    milestones = sorted(cfg.milestones)
    floor = cfg.min_lr / base_lr if base_lr > 0 else 0.0

    def factor(step: int) -> float:
        if step < warmup:
            return cfg.warmup_start_factor + (1.0 - cfg.warmup_start_factor) * step / warmup
        epoch = step // steps_per_epoch
        if cfg.name == "step":
            return cfg.gamma ** (epoch // cfg.step_size)
        if cfg.name == "multistep":
            return cfg.gamma ** sum(epoch >= m for m in milestones)
        if cfg.name == "cosine":
            span = max(1, total_steps - warmup)
            t = min(1.0, (step - warmup) / span)
            return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * t))
        if cfg.name == "constant":
            return 1.0
        raise ValueError(f"schedule {cfg.name!r} is in SCHEDULES but has no rule here")

    return factor


def build_scheduler(
    optimizer: torch.optim.Optimizer,
    cfg: ScheduleConfig,
    steps_per_epoch: int,
    total_steps: int,
) -> torch.optim.lr_scheduler.LambdaLR:
    """A per-optimizer-step ``LambdaLR`` (call ``.step()`` after every optimizer step).

    Stepping per iteration (not per epoch) lets a run resume in the middle of an epoch
    with exactly the lr it would have had.
    """
    base_lr = optimizer.param_groups[0]["lr"]
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_factor_fn(cfg, steps_per_epoch, total_steps, base_lr)
    )
