"""Where a run stands (all of it saved in ``last.pt``, so a resume continues from it), and
what a finished run reports."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch


@dataclass
class Progress:
    """Epochs done, micro-batches done in the epoch in progress, optimizer steps, the model
    selection so far, the epoch records, the wall time, and the running sums (loss,
    correct, images) of the epoch in progress."""

    epoch: int = 0
    epoch_step: int = 0
    step: int = 0
    best_top1: float | None = None
    best_epoch: int | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    epoch_sums: torch.Tensor = field(default_factory=lambda: torch.zeros(3, dtype=torch.float64))

    def counters(self) -> dict[str, int]:
        """The checkpoint's top-level ``epoch``, ``epoch_step`` and ``step``."""
        return {"epoch": self.epoch, "epoch_step": self.epoch_step, "step": self.step}

    def metrics(self) -> dict[str, Any]:
        """The checkpoint's ``metrics`` entries this object owns."""
        return {
            "best_val_top1": self.best_top1,
            "best_epoch": self.best_epoch,
            "history": self.history,
            "seconds": self.seconds,
            "epoch_sums": self.epoch_sums.cpu(),
        }

    def result(
        self,
        run_dir: Path,
        batches_per_epoch: int,
        selected: str,
        *,
        test: dict[str, float] | None,
        tested: str | None,
        stopped_by: str | None = None,
    ) -> FitResult:
        """What the run reports when it ends (or stops)."""
        return FitResult(
            run_dir=run_dir,
            steps=self.step,
            epochs=self.epoch,
            epoch_step=self.epoch_step,
            batches_per_epoch=batches_per_epoch,
            selected=selected,
            best_val_top1=self.best_top1,
            best_epoch=self.best_epoch,
            test=test,
            tested=tested,
            seconds=self.seconds,
            history=self.history,
            stopped_by=stopped_by,
        )

    @classmethod
    def from_checkpoint(
        cls, ckpt: dict[str, Any], device: torch.device, with_sums: bool = True
    ) -> Progress:
        """``with_sums``: take the epoch's running sums (the whole job's, under DDP: one
        process takes them, the others start from zero so that their sum stays right)."""
        metrics = ckpt.get("metrics") or {}
        sums = metrics.get("epoch_sums") if with_sums else None
        return cls(
            epoch=ckpt["epoch"],
            epoch_step=ckpt["epoch_step"],
            step=ckpt["step"],
            best_top1=metrics.get("best_val_top1"),
            best_epoch=metrics.get("best_epoch"),
            history=list(metrics.get("history", [])),
            seconds=float(metrics.get("seconds", 0.0)),
            epoch_sums=(
                sums.to(device, torch.float64)
                if sums is not None
                else torch.zeros(3, dtype=torch.float64, device=device)
            ),
        )


@dataclass
class FitResult:
    """What a finished (or ``max_steps``-stopped) run reports (accuracies in %, 0..100)."""

    run_dir: Path
    steps: int
    epochs: int  # epochs completed
    epoch_step: int  # batches done in an epoch left unfinished by train.max_steps (else 0)
    batches_per_epoch: int
    selected: str  # which weights were selected and tested: "ema" or "model"
    best_val_top1: float | None
    best_epoch: int | None
    test: dict[str, float] | None
    tested: str | None  # the checkpoint file the test split was evaluated with
    seconds: float  # wall time of training + evaluation, summed over resumed sessions
    history: list[dict[str, Any]] = field(default_factory=list)
    stopped_by: str | None = None  # the stop signal that ended the run early (e.g. "SIGTERM")


def epoch_line(record: dict[str, Any], epochs: int, improved: bool, selected: str) -> str:
    """The line an epoch end prints: train loss and top-1, then val's (``*``: a new best; the
    trained weights' top-1 too where the EMA is selected)."""
    line = (
        f"epoch {record['epoch']:>3}/{epochs}  step {record['step']:>6}  "
        f"train loss {record['train_loss']:.4f} top-1 {record['train_top1']:6.2f}%"
    )
    if "val_top1" in record:
        line += f"  val loss {record['val_loss']:.4f} top-1 {record['val_top1']:6.2f}%"
        line += " *" if improved else ""
        if selected == "ema":
            line += f"  (trained weights {record['val_top1_model']:6.2f}%)"
    return line
