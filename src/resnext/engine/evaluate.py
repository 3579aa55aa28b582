"""Evaluation of one model or an ensemble: top-1/top-5, loss, per-class accuracy, confusion.

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
from torch import Tensor, nn
from tqdm import tqdm


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


class _Meter:
    """Running counts for one score source."""

    def __init__(self, name: str, num_classes: int, keep_probs: bool) -> None:
        self.name, self.k = name, num_classes
        self.topk = min(5, num_classes)
        self.n = 0
        self.correct1 = 0
        self.correctk = 0
        self.nll = 0.0
        self.confusion = torch.zeros(num_classes * num_classes, dtype=torch.int64)
        self.keep = keep_probs
        self.probs: list[Tensor] = []

    def update(self, log_probs: Tensor, labels: Tensor) -> None:
        top = log_probs.topk(self.topk, dim=1).indices
        pred = top[:, 0]
        self.n += len(labels)
        self.correct1 += int((pred == labels).sum())
        self.correctk += int((top == labels[:, None]).any(dim=1).sum())
        self.nll -= float(log_probs.gather(1, labels[:, None]).sum())
        self.confusion += torch.bincount(labels * self.k + pred, minlength=self.k * self.k)
        if self.keep:
            self.probs.append(log_probs.exp())

    def result(self) -> EvalResult:
        if self.n == 0:
            raise ValueError("the evaluation data is empty: no images to evaluate")
        conf = self.confusion.view(self.k, self.k)
        counts = conf.sum(dim=1)
        per_class = [
            100.0 * int(conf[c, c]) / int(counts[c]) if counts[c] > 0 else math.nan
            for c in range(self.k)
        ]
        return EvalResult(
            name=self.name,
            num_images=self.n,
            top1=100.0 * self.correct1 / self.n,
            top5=100.0 * self.correctk / self.n,
            loss=self.nll / self.n,
            topk=self.topk,
            per_class=per_class,
            class_counts=[int(c) for c in counts],
            confusion=conf.clone(),
            probs=torch.cat(self.probs) if self.keep else None,
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
    model: nn.Module, images: Tensor, device: torch.device, precision: str = "fp32"
) -> Tensor:
    """Log mean-softmax of ``model`` on ``(B, C, H, W)`` or ``(B, crops, C, H, W)`` images."""
    num_crops = 1
    if images.ndim == 5:
        num_crops = images.shape[1]
        images = images.flatten(0, 1)
    elif images.ndim != 4:
        raise ValueError(f"images must be (B, C, H, W) or (B, crops, C, H, W), got {images.shape}")
    images = images.to(device, non_blocking=True)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
        logits = model(images)
    return crop_log_probs(logits, num_crops).cpu()


@torch.inference_mode()
def evaluate(
    models: Sequence[nn.Module],
    loader: Iterable[tuple[Any, Tensor]],
    num_classes: int,
    *,
    names: Sequence[str] | None = None,
    device: str | torch.device = "cpu",
    precision: str = "fp32",
    progress: bool = True,
    keep_probs: bool = False,
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
        precision: ``fp32`` or ``bf16`` (autocast; scores are reduced in fp32).
        keep_probs: also return every image's averaged probabilities.
    """
    if precision not in ("fp32", "bf16"):
        raise ValueError(f"precision must be fp32 or bf16, got {precision!r}")
    if not models:
        raise ValueError("no models to evaluate")
    device = torch.device(device)
    names = list(names) if names is not None else [f"model{i}" for i in range(len(models))]
    if len(names) != len(models):
        raise ValueError(f"{len(names)} names for {len(models)} models")
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
            raise ValueError(
                f"label {int(labels.max())} is outside the model's {num_classes} classes: "
                "the dataset and the model do not match"
            )
        inputs = list(images) if isinstance(images, (list, tuple)) else [images] * len(models)
        if len(inputs) != len(models):
            raise ValueError(f"the loader gave {len(inputs)} inputs for {len(models)} models")
        member_lp = []
        for model, x, meter in zip(models, inputs, meters, strict=True):
            lp = model_log_probs(model, x, device, precision)
            if lp.shape[1] != num_classes:
                raise ValueError(
                    f"{meter.name} has {lp.shape[1]} outputs, expected {num_classes} classes"
                )
            meter.update(lp, labels)
            member_lp.append(lp)
        if ens is not None:
            ens.update(ensemble_log_probs(member_lp), labels)
    return EvalReport(
        members=[m.result() for m in meters], ensemble=ens.result() if ens is not None else None
    )
