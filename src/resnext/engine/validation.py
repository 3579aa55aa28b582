"""Validation and test passes of a run: one loader per split for the whole run, the one
metric loop (:func:`~resnext.inference.metrics.run_metrics`), exact under DDP."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ..data import LoaderOrder, make_loader
from ..inference.metrics import run_metrics
from .distributed import DistInfo


class SplitEvaluator:
    """Loss, top-1, top-5 and image count of the run's val and test splits.

    Under DDP each process evaluates every ``world_size``-th image (no padding, so no image
    counts twice) and the counts are summed over processes.
    """

    def __init__(
        self,
        splits: dict[str, Dataset | None],
        *,
        batch_size: int,
        num_workers: int,
        num_classes: int,
        device: torch.device,
        precision: str,
        channels_last: bool,
        dist: DistInfo,
        workers_ignore: Sequence[str] = (),
    ) -> None:
        self.splits, self.batch_size, self.num_workers = splits, batch_size, num_workers
        self.num_classes, self.device, self.precision = num_classes, device, precision
        self.channels_last, self.dist = channels_last, dist
        self.workers_ignore = tuple(workers_ignore)  # signals the loader workers ignore
        self._loaders: dict[str, DataLoader] = {}

    def loader(self, split: str) -> DataLoader:
        """The split's loader, built on first use and kept (its workers persist)."""
        if split not in self._loaders:
            dataset = self.splits.get(split)
            if dataset is None:
                raise ValueError(f"this run has no {split} split")
            self._loaders[split] = make_loader(
                dataset,
                self.batch_size,
                LoaderOrder(rank=self.dist.rank, world_size=self.dist.world_size, pad=False),
                num_workers=self.num_workers,
                workers_ignore=self.workers_ignore,
            )
        return self._loaders[split]

    def __call__(
        self, split: str, model: nn.Module, precision: str | None = None
    ) -> dict[str, float]:
        """Loss, top-1, top-5 and image count of ``model`` on ``split``, computed in
        ``precision`` (default: the run's)."""
        report = run_metrics(
            [model],
            self.loader(split),
            self.num_classes,
            device=self.device,
            precision=precision or self.precision,
            channels_last=self.channels_last,
            progress=False,
            distributed=self.dist.enabled,
        )
        r = report.final
        return {"loss": r.loss, "top1": r.top1, "top5": r.top5, "images": r.num_images}
