"""Exponential moving average of a model's weights, updated after every optimizer step."""

from __future__ import annotations

import copy
from collections.abc import Mapping

import torch
from torch import nn


class ModelEma:
    """Keeps ``w_ema = decay * w_ema + (1 - decay) * w`` for every weight.

    ``decay`` close to 1 means a long memory (0.999 averages roughly the last 1,000
    steps); the update never inverts it (a pitfall of some implementations, PAPER.md).
    BN running statistics (floating-point buffers) are averaged with the same decay,
    as timm's ``ModelEmaV2`` does, so the EMA's statistics match its weights; integer
    buffers (``num_batches_tracked``) are copied.
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay must be in (0, 1), e.g. 0.999, got {decay}")
        self.decay = decay
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Move the average towards ``model``'s current weights (call after each step).

        One fused ``_foreach_lerp_`` over all floating-point tensors (a few kernel launches
        instead of one per tensor): ``lerp(w_ema, w, 1 - d) = d * w_ema + (1 - d) * w``.
        """
        own = self.module.state_dict()
        averaged, targets = [], []
        for name, value in model.state_dict().items():
            ema = own[name]
            if ema.is_floating_point():
                averaged.append(ema)
                targets.append(value.detach().to(ema.dtype))
            else:
                ema.copy_(value)
        if averaged:
            torch._foreach_lerp_(averaged, targets, 1.0 - self.decay)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.module.state_dict()

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        self.module.load_state_dict(state, strict=True)
