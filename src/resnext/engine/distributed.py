"""PyTorch DDP under ``torchrun``: env:// initialisation, gloo on CPU, nccl on CUDA."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from tqdm import tqdm

from ..data import BadFileReport, bad_file_report


@dataclass(frozen=True)
class DistInfo:
    """This process's place in the job; ``world_size == 1`` means no process group."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(device: torch.device, timeout_s: float | None = None) -> DistInfo:
    """Join the process group ``torchrun`` describes in the environment (or stay single).
    ``timeout_s`` (``train.dist_timeout_s``): how long a collective waits for a peer."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistInfo()
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        timeout = timedelta(seconds=timeout_s) if timeout_s is not None else None
        # torchrun's store outlives a restart of the worker group, and with it the keys the
        # group before wrote (gloo's peer addresses): a restarted process could read those
        # and connect to a dead peer. Each start of the group keys its own.
        rendezvous = dist.rendezvous("env://", **({"timeout": timeout} if timeout else {}))
        store, _, _ = next(rendezvous)
        attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
        store = dist.PrefixStore(f"resnext/start{attempt}", store)
        dist.init_process_group(
            backend=backend, store=store, rank=rank, world_size=world_size, timeout=timeout
        )
    return DistInfo(rank=rank, world_size=world_size, local_rank=local_rank)


def all_reduce_sum(t: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Sum ``t`` over all processes (a no-op for a single process)."""
    if info.enabled:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def broadcast_buffers(module: torch.nn.Module, info: DistInfo) -> None:
    """Give every process rank 0's buffers (BN running statistics).

    Each process updates its BN statistics from its own batches (DDP re-syncs them only at
    the next training forward), and an EMA of them drifts apart per process too. Evaluated
    and saved, the model is rank 0's: this makes every process hold exactly that.
    """
    if info.enabled:
        for buf in module.buffers():
            dist.broadcast(buf, src=0)


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def cleanup(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()


def rank0_printer(log: Callable[[str], None] | None, info: DistInfo) -> Callable[[str], None]:
    """Print on rank 0 only: ``log``, else tqdm's writer (which keeps the bar intact)."""
    if not info.is_main:
        return lambda _message: None
    return log if log is not None else tqdm.write


def job_bad_files(dataset: Any, info: DistInfo) -> BadFileReport:
    """The unreadable files (``data.on_bad_file=skip``) that any process of the job skipped:
    each reads its own samples (its own shards), so one process's count is part of the
    job's. Every process gets the same report, for the same epoch record."""
    report = bad_file_report(dataset)
    if not info.enabled:
        return report
    gathered: list[list[str] | None] = [None] * info.world_size
    dist.all_gather_object(gathered, report.paths)
    return BadFileReport(sorted({p for paths in gathered for p in paths or ()}))
