"""Exponential moving average of a model's weights, updated after every optimizer step, and
the three ways its BatchNorm statistics can be kept (``train.ema_bn``)."""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.utils.data import DataLoader, Dataset

from ..data import LoaderOrder, Preprocess, TransformedDataset, make_loader
from ..registry_names import EMA_BN_MODES

# How the EMA's BatchNorm running statistics are kept (``train.ema_bn``):
# ``average``: averaged along the trajectory with the weights' decay (timm's ModelEmaV2,
# torchvision's ``AveragedModel(use_buffers=True)``); they describe earlier, still-moving
# weights, not the averaged ones, so early in a run the EMA can score far below the model.
# ``copy``: the trained model's current statistics, copied at every update.
# ``recompute``: copied at every update, then measured afresh for the averaged weights on a
# fixed set of training batches before each validation and checkpoint (SWA's ``update_bn``).


class ModelEma:
    """Keeps ``w_ema = decay * w_ema + (1 - decay) * w`` for every weight.

    ``decay`` close to 1 means a long memory (0.999 averages roughly the last 1,000
    steps); the update never inverts it (a pitfall of some implementations, PAPER.md).
    Floating-point BN buffers follow ``bn`` (see :data:`EMA_BN_MODES`); integer buffers
    (``num_batches_tracked``) are copied.
    """

    def __init__(self, model: nn.Module, decay: float, bn: str = "average") -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay must be in (0, 1), e.g. 0.999, got {decay}")
        if bn not in EMA_BN_MODES:
            raise ValueError(f"EMA BN mode must be one of {', '.join(EMA_BN_MODES)}, got {bn!r}")
        self.decay, self.bn = decay, bn
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)
        self._buffers = {name for name, _ in self.module.named_buffers()}

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Move the average towards ``model``'s current weights (call after each step).

        One fused ``_foreach_lerp_`` over the averaged tensors (a few kernel launches
        instead of one per tensor): ``lerp(w_ema, w, 1 - d) = d * w_ema + (1 - d) * w``.
        """
        own = self.module.state_dict()
        averaged, targets = [], []
        for name, value in model.state_dict().items():
            ema = own[name]
            if ema.is_floating_point() and (self.bn == "average" or name not in self._buffers):
                averaged.append(ema)
                targets.append(value.detach().to(ema.dtype))
            else:
                ema.copy_(value)
        if averaged:
            torch._foreach_lerp_(averaged, targets, 1.0 - self.decay)

    @torch.no_grad()
    def recompute_bn(
        self,
        loader: Iterable[tuple[torch.Tensor, Any]],
        batches: int,
        device: torch.device,
        channels_last: bool = False,
    ) -> int:
        """Measure the EMA's BN running statistics afresh on the first ``batches`` (images,
        labels) batches of ``loader``, as an equal-weight average over them; returns the
        image count.

        Each BN layer's mean and variance come out as ``update_bn`` (SWA) computes them: the
        running estimates are reset and ``momentum=None`` makes them a cumulative average.
        The global RNG is left as it was (a loader may draw from it), so the training that
        goes on, and an exact resume, do not depend on when this ran.
        """
        layers = [m for m in self.module.modules() if isinstance(m, _BatchNorm)]
        if not layers:
            return 0
        momenta = [m.momentum for m in layers]
        for m in layers:
            m.reset_running_stats()
            m.momentum = None
        images = 0
        self.module.train()
        try:
            with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
                for _, (x, _) in zip(range(batches), loader, strict=False):
                    x = x.to(device)
                    self.module(
                        x.contiguous(memory_format=torch.channels_last) if channels_last else x
                    )
                    images += len(x)
        finally:
            self.module.eval()
            for m, momentum in zip(layers, momenta, strict=True):
                m.momentum = momentum
        return images

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.module.state_dict()

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        self.module.load_state_dict(state, strict=True)


def recompute_loader(
    train_set: Dataset,
    preprocess: Mapping[str, Any] | None,
    batch_size: int,
    seed: int,
    rank: int = 0,
    world_size: int = 1,
    *,
    num_workers: int = 0,
    workers_ignore: Sequence[str] = (),
) -> DataLoader:
    """The batches :meth:`ModelEma.recompute_bn` measures (``train.ema_bn=recompute``): this
    rank's train samples in epoch 0's shuffled order, the same batches at every recompute, so
    the statistics depend on the weights alone. With ``preprocess`` (the run's stored eval
    preprocessing) the train images go through its eval transform, as validation and
    deployment see them (measured as good or better than the train transform,
    docs/training.md); a train set that is not a :class:`~resnext.data.TransformedDataset` is
    used as it is. Its workers do not persist."""
    if preprocess is not None and isinstance(train_set, TransformedDataset):
        train_set = TransformedDataset(train_set.base, Preprocess.from_dict(preprocess).transform())
    return make_loader(
        train_set,
        batch_size,
        LoaderOrder(shuffle=True, seed=seed, rank=rank, world_size=world_size),
        num_workers=num_workers,
        persistent_workers=False,
        workers_ignore=workers_ignore,
    )
