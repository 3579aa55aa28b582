"""One optimisation step: forward and backward under the run's precision, gradient
accumulation (with DDP's ``no_sync`` between micro-batches), clipping, the optimizer, the
per-step lr schedule and the EMA. The :class:`~resnext.engine.Trainer` drives it."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from ..config import Config
from ..errors import ConfigError
from ..runtime import autocast
from .distributed import DistInfo
from .ema import ModelEma
from .optim import build_optimizer, build_scheduler, scaled_lr


class Stepper:
    """Owns what changes at every step: optimizer, scheduler, grad scaler, EMA.

    Args:
        model: the network, already on ``device`` (and in its memory format).
        cfg: the run config (optim, schedule and train sections).
        steps_per_epoch, total_steps: the schedule's length (the recipe's epochs).
        device, dist: where it runs; under DDP the model is wrapped here.
        log: where the compile warm-up is reported (``train.compile``).
    """

    def __init__(
        self,
        model: nn.Module,
        cfg: Config,
        *,
        steps_per_epoch: int,
        total_steps: int,
        device: torch.device,
        dist: DistInfo,
        log: Callable[[str], None] = print,
    ) -> None:
        tc = cfg.train
        precision = tc.precision  # resolved by the run's set-up: never auto here
        self.model, self.device, self.precision = model, device, precision
        self.clip = tc.clip_grad_norm
        self.ema = ModelEma(model, tc.ema_decay, bn=tc.ema_bn) if tc.ema_decay else None
        total_batch = tc.batch_size * tc.accumulate_steps * dist.world_size
        self.lr = scaled_lr(cfg.optim, total_batch)
        self.optimizer = build_optimizer(model, cfg.optim, self.lr)
        self.scheduler = build_scheduler(self.optimizer, cfg.schedule, steps_per_epoch, total_steps)
        self.scaler = torch.amp.GradScaler("cuda") if precision == "fp16" else None
        self.forward_model: nn.Module = model
        self.ddp: DistributedDataParallel | None = None
        if dist.enabled:
            ids = [device.index] if device.type == "cuda" else None
            self.ddp = DistributedDataParallel(model, device_ids=ids)
            self.forward_model = self.ddp
        if tc.compile:
            self.forward_model = torch.compile(self.forward_model)  # type: ignore[assignment]
        self._log = log
        # train.compile: the input shapes compiled so far (a new one compiles on first use)
        self._compiled_shapes: set[tuple[int, ...]] | None = set() if tc.compile else None
        self.criterion = nn.CrossEntropyLoss(label_smoothing=tc.label_smoothing)

    def accumulate(
        self, x: torch.Tensor, y: torch.Tensor, group_size: int, last_micro: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Forward and backward of one micro-batch; gradients add up over ``group_size`` of
        them (DDP all-reduces only on the last). Returns the (unscaled) loss and the logits."""
        new_shape = self._compiled_shapes is not None and x.shape not in self._compiled_shapes
        start = time.perf_counter()
        sync = self.ddp.no_sync() if self.ddp is not None and not last_micro else None
        with sync or contextlib.nullcontext():
            with autocast(self.device, self.precision):
                logits = self.forward_model(x)
                loss = self.criterion(logits.float(), y)
            scaled = loss / group_size
            (self.scaler.scale(scaled) if self.scaler is not None else scaled).backward()
        if new_shape:
            assert self._compiled_shapes is not None
            self._compiled_shapes.add(tuple(x.shape))
            self._log(
                f"train.compile: forward and backward for input {tuple(x.shape)} compiled and "
                f"run in {time.perf_counter() - start:.1f} s (once per input shape)"
            )
        return loss.detach(), logits.detach()

    def step(self) -> float:
        """Clip, step the optimizer, scheduler and EMA; returns the lr the step used."""
        if self.clip is not None:
            if self.scaler is not None:
                self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.model.parameters(), self.clip)
        lr = self.optimizer.param_groups[0]["lr"]
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        if self.ema is not None:
            self.ema.update(self.model)
        return lr

    @property
    def current_lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    def state_dict(self) -> dict[str, Any]:
        """The checkpoint entries this object owns."""
        return {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
        }

    def load_state_dict(self, ckpt: dict[str, Any]) -> None:
        """Restore from a checkpoint: optimizer, scheduler, scaler and the EMA."""
        if self.ema is not None:
            if ckpt.get("ema") is None:
                raise ConfigError(
                    "train.ema_decay is set but the checkpoint has no EMA; resume with the "
                    "run's own config (ema_decay unset) or start a new run"
                )
            self.ema.load_state_dict(ckpt["ema"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        if self.scaler is not None and ckpt.get("scaler") is not None:
            self.scaler.load_state_dict(ckpt["scaler"])
