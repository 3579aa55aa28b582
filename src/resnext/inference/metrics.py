"""The one metric loop: top-1, top-k, loss, per-class counts and the confusion matrix of one
model or an ensemble, exact under DDP. Validation during training and ``resnext eval`` both
run it.

Scores are combined as the paper does (Sec. 4): over the crops of a 10-crop test and over
the members of an ensemble, the *softmax* outputs are averaged. Everything is kept in log
space (``logsumexp`` of log-softmax minus ``log n``), which is that average computed without
underflow, so the loss is the exact cross-entropy of the averaged distribution.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from tqdm import tqdm

from ..errors import DataError
from ..runtime import autocast, check_precision


@dataclass
class EvalResult:
    """Accuracy of one model (or of the ensemble) on one split; percentages in 0..100."""

    name: str
    num_images: int
    top1: float
    top5: float
    loss: float  # mean cross-entropy of the (averaged) softmax, natural log
    topk: int  # k of the "top-5" column: min(5, classes)
    per_class: list[float]  # accuracy of each class in %, NaN for a class with no images
    class_counts: list[int]  # images of each class
    confusion: Tensor  # (classes, classes) int64: rows = true class, columns = predicted
    probs: Tensor | None = None  # (num_images, classes) averaged softmax, if asked for
    labels: Tensor | None = None  # (num_images,) the true classes, with probs

    @property
    def top1_error(self) -> float:
        return 100.0 - self.top1

    @property
    def top5_error(self) -> float:
        return 100.0 - self.top5

    def to_dict(self, classes: Sequence[str] | None = None) -> dict[str, Any]:
        """Plain JSON-ready values; per-class accuracy keyed by class name if given."""
        names = (
            list(classes) if classes is not None else [str(i) for i in range(len(self.per_class))]
        )
        return {
            "name": self.name,
            "num_images": self.num_images,
            "top1": self.top1,
            "top5": self.top5,
            "top1_error": self.top1_error,
            "top5_error": self.top5_error,
            "topk": self.topk,
            "loss": self.loss,
            "per_class": {
                n: {"accuracy": None if math.isnan(a) else a, "images": c}
                for n, a, c in zip(names, self.per_class, self.class_counts, strict=True)
            },
            "confusion": self.confusion.tolist(),
        }


@dataclass
class EvalReport:
    """Each member's result and, for more than one member, the ensemble's."""

    members: list[EvalResult]
    ensemble: EvalResult | None = None
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def final(self) -> EvalResult:
        """The ensemble's result, or the single model's."""
        return self.ensemble if self.ensemble is not None else self.members[0]

    def to_dict(self) -> dict[str, Any]:
        """Every number, with ``info`` (what was evaluated and how) merged in, JSON-ready."""
        info = dict(self.info)
        classes = info.get("classes")
        described = info.pop("members", [{} for _ in self.members])
        return {
            **info,
            "members": [
                {**r.to_dict(classes), **{k: v for k, v in d.items() if k != "name"}}
                for r, d in zip(self.members, described, strict=True)
            ],
            "ensemble": self.ensemble.to_dict(classes) if self.ensemble else None,
        }


class _Meter:
    """Running counts for one score source, as tensors so that DDP can sum them."""

    def __init__(self, name: str, num_classes: int, keep_probs: bool) -> None:
        self.name, self.k = name, num_classes
        self.topk = min(5, num_classes)
        self.sums = torch.zeros(4, dtype=torch.float64)  # images, top-1 hits, top-k hits, NLL
        self.confusion = torch.zeros(num_classes * num_classes, dtype=torch.int64)
        self.keep = keep_probs
        self.probs: list[Tensor] = []
        self.labels: list[Tensor] = []

    def update(self, log_probs: Tensor, labels: Tensor) -> None:
        top = log_probs.topk(self.topk, dim=1).indices
        pred = top[:, 0]
        self.sums[0] += len(labels)
        self.sums[1] += int((pred == labels).sum())
        self.sums[2] += int((top == labels[:, None]).any(dim=1).sum())
        self.sums[3] -= float(log_probs.double().gather(1, labels[:, None]).sum())
        self.confusion += torch.bincount(labels * self.k + pred, minlength=self.k * self.k)
        if self.keep:
            self.probs.append(log_probs.exp())
            self.labels.append(labels.clone())

    def all_reduce(self) -> None:
        """Sum the counts of every process (each evaluated its own share of the images)."""
        # NCCL reduces only CUDA tensors; gloo reduces these CPU ones in place.
        on = (
            torch.device("cuda", torch.cuda.current_device())
            if dist.get_backend() == "nccl"
            else None
        )
        for t in (self.sums, self.confusion):
            shared = t.to(on) if on is not None else t
            dist.all_reduce(shared, op=dist.ReduceOp.SUM)
            t.copy_(shared)

    def result(self) -> EvalResult:
        n = int(self.sums[0])
        if n == 0:
            raise DataError("the evaluation data is empty: no images to evaluate")
        conf = self.confusion.view(self.k, self.k)
        counts = conf.sum(dim=1)
        per_class = [
            100.0 * int(conf[c, c]) / int(counts[c]) if counts[c] > 0 else math.nan
            for c in range(self.k)
        ]
        return EvalResult(
            name=self.name,
            num_images=n,
            top1=100.0 * float(self.sums[1]) / n,
            top5=100.0 * float(self.sums[2]) / n,
            loss=float(self.sums[3]) / n,
            topk=self.topk,
            per_class=per_class,
            class_counts=[int(c) for c in counts],
            confusion=conf.clone(),
            probs=torch.cat(self.probs) if self.keep and self.probs else None,
            labels=torch.cat(self.labels) if self.keep and self.labels else None,
        )


def crop_log_probs(logits: Tensor, num_crops: int) -> Tensor:
    """``(B * n, K)`` logits of ``n`` crops per image -> log of the crops' mean softmax."""
    lp = logits.float().log_softmax(dim=1)
    if num_crops == 1:
        return lp
    lp = lp.view(-1, num_crops, lp.shape[1])
    return torch.logsumexp(lp, dim=1) - math.log(num_crops)


def ensemble_log_probs(member_log_probs: Sequence[Tensor]) -> Tensor:
    """Log of the members' mean softmax (the paper's ensemble)."""
    stacked = torch.stack(list(member_log_probs))
    return torch.logsumexp(stacked, dim=0) - math.log(len(member_log_probs))


@torch.inference_mode()
def model_log_probs(
    model: nn.Module,
    images: Tensor,
    device: torch.device,
    precision: str = "fp32",
    channels_last: bool = False,
) -> Tensor:
    """Log mean-softmax of ``model`` on ``(B, C, H, W)`` or ``(B, crops, C, H, W)`` images."""
    num_crops = 1
    if images.ndim == 5:
        num_crops = images.shape[1]
        images = images.flatten(0, 1)
    elif images.ndim != 4:
        raise ValueError(f"images must be (B, C, H, W) or (B, crops, C, H, W), got {images.shape}")
    images = images.to(device, non_blocking=True)
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    with autocast(device, precision):
        logits = model(images)
    return crop_log_probs(logits, num_crops).cpu()


@torch.inference_mode()
def run_metrics(
    models: Sequence[nn.Module],
    loader: Iterable[tuple[Any, Tensor]],
    num_classes: int,
    *,
    names: Sequence[str] | None = None,
    device: str | torch.device = "cpu",
    precision: str = "fp32",
    channels_last: bool = False,
    progress: bool = True,
    keep_probs: bool = False,
    distributed: bool = False,
) -> EvalReport:
    """Evaluate each model and (for several) their softmax-averaged ensemble in one pass.

    Args:
        models: the members, already on ``device``; put in eval mode here.
        loader: yields ``(images, labels)``. ``images`` is one tensor every member takes,
            or a list with one tensor per member (members with different preprocessing).
            A 5-D tensor ``(B, crops, C, H, W)`` is a multi-crop test: the softmax is
            averaged over the crops.
        num_classes: the classifier outputs; labels must lie in ``0..num_classes-1``.
        names: a display name per member.
        precision: ``fp32``, ``bf16`` or ``fp16`` (autocast; scores are reduced in fp32).
        channels_last: feed the images in NHWC layout (for models converted to it).
        keep_probs: also return every image's averaged probabilities and its label (single
            process only).
        distributed: every process of a DDP job ran its own share of the images (no
            padding); the counts are summed over processes, so the result is exact.

    The members are put in eval mode and given back in the mode they came in.
    """
    if keep_probs and distributed:
        raise ValueError("keep_probs is not available under DDP (each process has a share)")
    if not models:
        raise ValueError("no models to evaluate")
    device = torch.device(device)
    check_precision(precision, device)  # fails before any work
    names = list(names) if names is not None else [f"model{i}" for i in range(len(models))]
    if len(names) != len(models):
        raise ValueError(f"{len(names)} names for {len(models)} models")
    modes = [m.training for m in models]
    for m in models:
        m.eval()
    meters = [_Meter(n, num_classes, keep_probs) for n in names]
    ens = _Meter("ensemble", num_classes, keep_probs) if len(models) > 1 else None
    total = len(loader) if hasattr(loader, "__len__") else None  # type: ignore[arg-type]
    for images, labels in tqdm(
        loader, total=total, desc="eval", unit="batch", disable=not progress, leave=False
    ):
        labels = torch.as_tensor(labels, dtype=torch.int64)
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
            raise DataError(
                f"label {int(labels.max())} is outside the model's {num_classes} classes: "
                "the dataset and the model do not match"
            )
        inputs = list(images) if isinstance(images, (list, tuple)) else [images] * len(models)
        if len(inputs) != len(models):
            raise ValueError(f"the loader gave {len(inputs)} inputs for {len(models)} models")
        member_lp = []
        for model, x, meter in zip(models, inputs, meters, strict=True):
            lp = model_log_probs(model, x, device, precision, channels_last)
            if lp.shape[1] != num_classes:
                raise DataError(
                    f"{meter.name} has {lp.shape[1]} outputs, expected {num_classes} classes"
                )
            meter.update(lp, labels)
            member_lp.append(lp)
        if ens is not None:
            ens.update(ensemble_log_probs(member_lp), labels)
    for m, mode in zip(models, modes, strict=True):
        m.train(mode)
    every = [*meters, *([ens] if ens is not None else [])]
    if distributed:
        for meter in every:
            meter.all_reduce()
    return EvalReport(
        members=[m.result() for m in meters], ensemble=ens.result() if ens is not None else None
    )
