"""SyncBatchNorm (``train.sync_bn``): BN batch statistics over every process of a DDP job.

Plain BN under DDP normalises each process's batch with that batch's own statistics, so
the statistics come from ``train.batch_size`` images however many processes there are;
with small per-GPU batches (detection, large models) that hurts. SyncBatchNorm all-reduces
the statistics in every training forward: normalisation over the global batch, at the
cost of one collective per BN layer. PyTorch implements it for CUDA (NCCL) only.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import ConfigError
from .distributed import DistInfo


def check_sync_bn(device: torch.device, dist: DistInfo) -> str | None:
    """Refuse ``train.sync_bn`` where it cannot run; returns a note where it changes nothing."""
    if device.type != "cuda":
        raise ConfigError(
            f"train.sync_bn needs CUDA GPUs (PyTorch's SyncBatchNorm runs on NCCL only) and this "
            f"run is on {device}; drop train.sync_bn, or train on GPUs under torchrun"
        )
    if not dist.enabled:
        return "train.sync_bn: one process, so BN statistics are those of its batch anyway"
    return None


def convert_sync_batchnorm(model: nn.Module, device: torch.device, dist: DistInfo) -> nn.Module:
    """``model`` with every BatchNorm layer a SyncBatchNorm (same parameters and buffers, same
    state-dict keys), for a DDP job on CUDA; unchanged for a single process."""
    check_sync_bn(device, dist)
    if not dist.enabled:
        return model
    return to_sync_batchnorm(model)


def to_sync_batchnorm(model: nn.Module) -> nn.Module:
    """The conversion itself (device-independent, so it can be checked on a CPU)."""
    return nn.SyncBatchNorm.convert_sync_batchnorm(model)
