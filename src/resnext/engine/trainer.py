"""The training loop: it receives a model and datasets, never builds them.

One :class:`Trainer` runs SGD with a per-step schedule, gradient accumulation,
clipping, mixed precision, an EMA, DDP, validation-based model selection and a single
final test, writing ``last.pt`` / ``best.pt`` / ``metrics.jsonl`` / ``curves.png``
into its run folder. Everything a run depends on is in ``last.pt`` (written at every
epoch end and every ``train.checkpoint_every_steps`` steps), so a run killed at any
point resumes to the same weights, bit for bit on CPU with deterministic settings.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm import tqdm

from ..config import Config, ConfigError
from ..data import bad_file_report, make_loader
from ..weights import load_checked
from .checkpoint import copy_checkpoint, load_checkpoint, save_checkpoint
from .distributed import DistInfo, all_reduce_sum, barrier
from .ema import ModelEma
from .optim import build_optimizer, build_scheduler, scaled_lr
from .rng import get_rng_state, set_rng_state

SINGLE = DistInfo()  # a single process: no process group


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; the message names the step and the last good checkpoint."""


@dataclass
class FitResult:
    """What a finished run reports (accuracies in %, 0..100)."""

    run_dir: Path
    steps: int
    epochs: int
    selected: str  # which weights were selected and tested: "ema" or "model"
    best_val_top1: float | None
    best_epoch: int | None
    test: dict[str, float] | None
    seconds: float  # wall time of training + evaluation, summed over resumed sessions
    history: list[dict[str, Any]] = field(default_factory=list)


def amp_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``train.amp`` on ``device`` (None = full fp32)."""
    if amp == "none":
        return None
    if amp == "bf16":
        return torch.bfloat16
    if amp == "fp16":
        if device.type != "cuda":
            raise ConfigError("train.amp=fp16 needs a CUDA device; on CPU use train.amp=bf16")
        return torch.float16
    raise ConfigError(f"train.amp must be none, bf16 or fp16, got {amp!r}")


def configure_torch(deterministic: bool, threads: int | None) -> None:
    """Thread count and deterministic kernels, set before any model runs."""
    if threads is not None:
        if threads < 1:
            raise ConfigError(f"train.threads must be at least 1, got {threads}")
        torch.set_num_threads(threads)
    if deterministic:
        # warn_only: CUDA ops without a deterministic kernel warn instead of stopping
        # the run; every op this model uses on CPU is deterministic at a fixed thread count.
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
    else:
        torch.backends.cudnn.benchmark = True


@torch.no_grad()
def evaluate_split(
    model: nn.Module,
    dataset: Dataset,
    *,
    batch_size: int,
    device: torch.device,
    dtype: torch.dtype | None = None,
    channels_last: bool = False,
    num_workers: int = 0,
    dist: DistInfo = SINGLE,
) -> dict[str, float]:
    """Top-1, top-5 (%, top-k with k = min(5, classes)) and mean cross-entropy on ``dataset``.

    Under DDP each process takes every ``world_size``-th image (no padding) and the
    counts are summed, so the result is exact over the whole split.
    """
    was_training = model.training
    model.eval()
    indices = range(dist.rank, len(dataset), dist.world_size)  # type: ignore[arg-type]
    loader = DataLoader(Subset(dataset, indices), batch_size=batch_size, num_workers=num_workers)
    sums = torch.zeros(4, dtype=torch.float64, device=device)  # loss, top1, topk, n
    for x, y in loader:
        x = x.to(device, non_blocking=True)
        y = torch.as_tensor(y).to(device, non_blocking=True)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            logits = model(x)
        logits = logits.float()
        k = min(5, logits.shape[1])
        top = logits.topk(k, dim=1).indices
        sums[0] += F.cross_entropy(logits, y, reduction="sum").double()
        sums[1] += (top[:, 0] == y).sum()
        sums[2] += (top == y[:, None]).any(dim=1).sum()
        sums[3] += len(y)
    all_reduce_sum(sums, dist)
    model.train(was_training)
    n = max(1.0, float(sums[3]))
    return {
        "loss": float(sums[0]) / n,
        "top1": 100.0 * float(sums[1]) / n,
        "top5": 100.0 * float(sums[2]) / n,
        "images": int(sums[3]),
    }


class Trainer:
    """Trains ``model`` on ``train_set``, selects on ``val_set``, tests once on ``test_set``.

    Args:
        model: the network, on CPU or already on ``device``; its ``arch`` (if any) is saved.
        train_set, val_set, test_set: transformed datasets yielding ``(image, label)``;
            ``train_set`` must accept ``(index, sample_seed)`` keys (see
            :class:`~resnext.data.TransformedDataset`). ``val_set`` None = keep the
            last epoch; ``test_set`` None = no final test.
        cfg: the resolved run config (optim, schedule and train sections are used here;
            the whole of it is stored in every checkpoint).
        run_dir: folder for checkpoints, metrics and curves (written by rank 0 only).
        classes: class names in label order; ``preprocess``: what evaluation must apply.
        device: where to train; ``dist``: this process's place in a DDP job.
        log: where one-line messages go (the progress bar's ``write`` by default).
    """

    def __init__(
        self,
        model: nn.Module,
        train_set: Dataset,
        val_set: Dataset | None,
        test_set: Dataset | None,
        cfg: Config,
        run_dir: str | Path,
        *,
        classes: list[str],
        preprocess: dict[str, Any],
        device: torch.device,
        dist: DistInfo = SINGLE,
        log: Callable[[str], None] | None = None,
    ) -> None:
        self.cfg, self.tc = cfg, cfg.train
        self.train_set, self.val_set, self.test_set = train_set, val_set, test_set
        self.run_dir = Path(run_dir)
        self.classes, self.preprocess = list(classes), dict(preprocess)
        self.device, self.dist = device, dist
        self._log = log
        self.dtype = amp_dtype(self.tc.amp, device)
        if len(train_set) == 0:  # type: ignore[arg-type]
            raise ConfigError("the train split is empty: nothing to train on")

        self.model = model.to(device)
        if self.tc.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.ema = ModelEma(self.model, self.tc.ema_decay) if self.tc.ema_decay else None

        per_rank = math.ceil(len(train_set) / dist.world_size)  # type: ignore[arg-type]
        self.batches_per_epoch = math.ceil(per_rank / self.tc.batch_size)
        self.steps_per_epoch = math.ceil(self.batches_per_epoch / self.tc.accumulate_steps)
        self.total_steps = self.tc.epochs * self.steps_per_epoch
        if self.tc.max_steps is not None:
            if self.tc.max_steps < 1:
                raise ConfigError(f"train.max_steps must be at least 1, got {self.tc.max_steps}")
            self.total_steps = min(self.total_steps, self.tc.max_steps)
        total_batch = self.tc.batch_size * self.tc.accumulate_steps * dist.world_size
        self.lr = scaled_lr(cfg.optim, total_batch)
        self.optimizer = build_optimizer(self.model, cfg.optim, self.lr)
        self.scheduler = build_scheduler(
            self.optimizer, cfg.schedule, self.steps_per_epoch, self.total_steps
        )
        self.scaler = torch.amp.GradScaler("cuda") if self.dtype == torch.float16 else None

        self.forward_model: nn.Module = self.model
        self.ddp: DistributedDataParallel | None = None
        if dist.enabled:
            ids = [device.index] if device.type == "cuda" else None
            self.ddp = DistributedDataParallel(self.model, device_ids=ids)
            self.forward_model = self.ddp
        if self.tc.compile:
            self.forward_model = torch.compile(self.forward_model)  # type: ignore[assignment]
        self.criterion = nn.CrossEntropyLoss(label_smoothing=self.tc.label_smoothing)

        # Progress: epochs done, micro-batches done in the epoch in progress, optimizer steps.
        self.epoch, self.epoch_step, self.step = 0, 0, 0
        self.best_top1: float | None = None
        self.best_epoch: int | None = None
        self.history: list[dict[str, Any]] = []
        self.seconds = 0.0
        # Running sums of the epoch in progress (loss, correct, images), kept in last.pt.
        self.epoch_sums = torch.zeros(3, dtype=torch.float64, device=device)
        self.resumed_from: Path | None = None

    # -- state -------------------------------------------------------------------------
    @property
    def selected(self) -> str:
        return "ema" if self.ema is not None and self.tc.eval_ema else "model"

    @property
    def last_path(self) -> Path:
        return self.run_dir / "last.pt"

    @property
    def best_path(self) -> Path:
        return self.run_dir / "best.pt"

    def state(self) -> dict[str, Any]:
        """The checkpoint payload (see :mod:`resnext.engine.checkpoint` for the keys)."""
        arch = getattr(self.model, "arch", None)
        return {
            "arch": arch.to_dict() if arch is not None else None,
            "model": self.model.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "epoch": self.epoch,
            "epoch_step": self.epoch_step,
            "step": self.step,
            "rng": get_rng_state(),
            "config": self.cfg.to_dict(),
            "classes": self.classes,
            "preprocess": self.preprocess,
            "metrics": {
                "best_val_top1": self.best_top1,
                "best_epoch": self.best_epoch,
                "selected": self.selected,
                "history": self.history,
                "seconds": self.seconds,
                "epoch_sums": self.epoch_sums.cpu(),
                "world_size": self.dist.world_size,
            },
        }

    def load_state(self, ckpt: dict[str, Any], path: str | Path | None = None) -> None:
        """Continue from a checkpoint written by :meth:`state` (weights, optimizer, RNG...)."""
        metrics = ckpt.get("metrics") or {}
        if metrics.get("world_size", 1) != self.dist.world_size:
            raise ConfigError(
                f"the checkpoint was written by {metrics.get('world_size')} processes and this "
                f"run has {self.dist.world_size}; resume with the same number of processes "
                "(the data order of each process depends on it)"
            )
        load_checked(self.model, ckpt["model"])
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
        self.epoch, self.epoch_step, self.step = ckpt["epoch"], ckpt["epoch_step"], ckpt["step"]
        self.best_top1, self.best_epoch = metrics.get("best_val_top1"), metrics.get("best_epoch")
        self.history = list(metrics.get("history", []))
        self.seconds = float(metrics.get("seconds", 0.0))
        sums = metrics.get("epoch_sums")
        if sums is not None:
            self.epoch_sums = sums.to(self.device, torch.float64)
        set_rng_state(ckpt["rng"])
        self.resumed_from = Path(path) if path is not None else None

    # -- logging -----------------------------------------------------------------------
    def log(self, message: str) -> None:
        if not self.dist.is_main:
            return
        if self._log is not None:
            self._log(message)
        else:
            tqdm.write(message)

    def _metrics_line(self, record: dict[str, Any]) -> None:
        if self.dist.is_main:
            with open(self.run_dir / "metrics.jsonl", "a") as f:
                f.write(json.dumps(record) + "\n")

    def _prepare_metrics_file(self) -> None:
        """Start metrics.jsonl afresh, or cut it back to the resumed checkpoint's step.

        Lines written after the checkpoint by a killed process are dropped, so a resumed
        run's log is the same as an uninterrupted one's.
        """
        if not self.dist.is_main:
            return
        path = self.run_dir / "metrics.jsonl"
        kept: list[str] = []
        if self.resumed_from is not None and path.exists():
            for line in path.read_text().splitlines():
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line cut short by the kill
                if record.get("step", 0) <= self.step and record.get("kind") != "test":
                    kept.append(line)
        path.write_text("".join(line + "\n" for line in kept))

    # -- the loop ----------------------------------------------------------------------
    def _loader(self, epoch: int, start: int) -> DataLoader:
        return make_loader(
            self.train_set,
            self.tc.batch_size,
            shuffle=True,
            seed=self.tc.seed,
            epoch=epoch,
            start=start,
            num_workers=self.cfg.data.num_workers,
            rank=self.dist.rank,
            world_size=self.dist.world_size,
        )

    def _save_last(self) -> None:
        if self.dist.is_main:
            save_checkpoint(self.last_path, self.state())

    def _check_finite(self, loss_sum: torch.Tensor, batch: int) -> None:
        if not torch.isfinite(loss_sum).all():
            kind = "NaN" if torch.isnan(loss_sum).any() else "infinite"
            where = (
                f"the last good checkpoint {self.last_path} is kept"
                if self.last_path.exists()
                else "no checkpoint had been written yet"
            )
            self._metrics_line(
                {"kind": "error", "epoch": self.epoch + 1, "step": self.step + 1, "loss": kind}
            )
            raise NonFiniteLossError(
                f"the loss became {kind} at step {self.step + 1} (epoch {self.epoch + 1}, "
                f"batch {batch}/{self.batches_per_epoch}); training stopped and {where}. "
                "Lower optim.lr, add schedule.warmup_epochs or train.clip_grad_norm, "
                "or check the data."
            )

    def _train_epoch(self, bar: tqdm) -> bool:
        """Run the rest of the current epoch; True if ``max_steps`` stopped it early."""
        tc, accum, n_batches = self.tc, self.tc.accumulate_steps, self.batches_per_epoch
        self.model.train()
        loader = self._loader(self.epoch, self.epoch_step * tc.batch_size)
        group = torch.zeros(2, dtype=torch.float64, device=self.device)  # loss sum, images
        t0, images_done = time.perf_counter(), 0
        for x, y in loader:
            b = self.epoch_step  # index of this micro-batch in the epoch
            group_start = (b // accum) * accum
            group_size = min(accum, n_batches - group_start)
            last_micro = b + 1 - group_start == group_size
            x = x.to(self.device, non_blocking=True)
            y = torch.as_tensor(y).to(self.device, non_blocking=True)
            if tc.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            # DDP: all-reduce gradients only on the last micro-batch of an accumulation group.
            sync = (
                self.ddp.no_sync()
                if self.ddp is not None and not last_micro
                else contextlib.nullcontext()
            )
            with sync:
                with torch.autocast(
                    self.device.type,
                    dtype=self.dtype or torch.float32,
                    enabled=self.dtype is not None,
                ):
                    logits = self.forward_model(x)
                    loss = self.criterion(logits.float(), y)
                scaled = loss / group_size
                (self.scaler.scale(scaled) if self.scaler is not None else scaled).backward()
            with torch.no_grad():
                n = len(y)
                group[0] += loss.detach().double() * n
                group[1] += n
                self.epoch_sums[0] += loss.detach().double() * n
                self.epoch_sums[1] += (logits.detach().argmax(1) == y).sum()
                self.epoch_sums[2] += n
            self.epoch_step = b + 1
            images_done += n
            if not last_micro:
                continue

            all_reduce_sum(group, self.dist)
            self._check_finite(group[0], b + 1)
            if tc.clip_grad_norm is not None:
                if self.scaler is not None:
                    self.scaler.unscale_(self.optimizer)
                nn.utils.clip_grad_norm_(self.model.parameters(), tc.clip_grad_norm)
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
            self.step += 1
            loss_value = float(group[0] / group[1])
            group.zero_()
            bar.update(1)
            bar.set_postfix_str(
                f"epoch {self.epoch + 1}/{tc.epochs} loss {loss_value:.3f} lr {lr:.3g}",
                refresh=False,
            )
            if tc.log_every and self.step % tc.log_every == 0:
                dt = time.perf_counter() - t0
                self._metrics_line(
                    {
                        "kind": "train",
                        "epoch": self.epoch + 1,
                        "step": self.step,
                        "loss": loss_value,
                        "lr": lr,
                        "img_per_s": images_done * self.dist.world_size / max(dt, 1e-9),
                    }
                )
                t0, images_done = time.perf_counter(), 0
            stop = tc.max_steps is not None and self.step >= tc.max_steps
            if stop:
                return True
            if (
                tc.checkpoint_every_steps
                and self.step % tc.checkpoint_every_steps == 0
                and self.epoch_step < n_batches
            ):
                self._save_last()
        return False

    def _eval_model(self) -> nn.Module:
        return self.ema.module if self.selected == "ema" else self.model

    def _evaluate(self, dataset: Dataset, model: nn.Module | None = None) -> dict[str, float]:
        return evaluate_split(
            model if model is not None else self._eval_model(),
            dataset,
            batch_size=self.tc.batch_size * 2,
            device=self.device,
            dtype=self.dtype,
            channels_last=self.tc.channels_last,
            num_workers=self.cfg.data.num_workers,
            dist=self.dist,
        )

    def _end_of_epoch(self, partial: bool) -> None:
        """Validate, log, and write last.pt (and best.pt if validation improved)."""
        sums = self.epoch_sums.clone()
        all_reduce_sum(sums, self.dist)
        images = max(1.0, float(sums[2]))
        record: dict[str, Any] = {
            "kind": "epoch",
            "epoch": self.epoch if not partial else self.epoch + 1,
            "step": self.step,
            "partial": partial,
            "train_loss": float(sums[0]) / images,
            "train_top1": 100.0 * float(sums[1]) / images,
            "lr": self.optimizer.param_groups[0]["lr"],
        }
        epoch_done = record["epoch"]
        due = partial or epoch_done % self.tc.eval_every == 0 or epoch_done == self.tc.epochs
        improved = False
        if self.val_set is not None and due:
            val = self._evaluate(self.val_set)
            record.update(val_loss=val["loss"], val_top1=val["top1"], val_top5=val["top5"])
            if self.best_top1 is None or val["top1"] > self.best_top1:
                self.best_top1, self.best_epoch, improved = val["top1"], epoch_done, True
        elif self.val_set is None:
            self.best_epoch, improved = epoch_done, True  # no val split: keep the latest
        skipped = bad_file_report(self.train_set)
        if skipped.count:
            record["skipped_files"] = skipped.count
        record["seconds"] = self.seconds + (time.perf_counter() - self._t_start)
        if not partial:
            self.epoch_sums.zero_()
        self.history.append(record)
        self._metrics_line(record)
        msg = (
            f"epoch {epoch_done:>3}/{self.tc.epochs}  step {self.step:>6}  "
            f"train loss {record['train_loss']:.4f} top-1 {record['train_top1']:6.2f}%"
        )
        if "val_top1" in record:
            msg += f"  val loss {record['val_loss']:.4f} top-1 {record['val_top1']:6.2f}%" + (
                " *" if improved else ""
            )
        self.log(msg)
        if skipped.count:
            self.log(f"epoch {epoch_done:>3}: {skipped}")
        self.seconds += time.perf_counter() - self._t_start
        self._t_start = time.perf_counter()
        self._save_last()
        if improved and self.dist.is_main:
            copy_checkpoint(self.last_path, self.best_path)

    def fit(self) -> FitResult:
        """Train to ``train.epochs`` (or ``max_steps``), then test the selected checkpoint."""
        if self.dist.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        self._prepare_metrics_file()
        self._t_start = time.perf_counter()
        bar = tqdm(
            total=self.total_steps,
            initial=min(self.step, self.total_steps),
            desc="train",
            unit="step",
            disable=not (self.tc.progress and self.dist.is_main),
            dynamic_ncols=True,
        )
        with bar:
            while self.epoch < self.tc.epochs:
                if self.tc.max_steps is not None and self.step >= self.tc.max_steps:
                    break
                stopped = self._train_epoch(bar)
                if stopped and self.epoch_step < self.batches_per_epoch:
                    self._end_of_epoch(partial=True)
                    break
                self.epoch, self.epoch_step = self.epoch + 1, 0
                self._end_of_epoch(partial=False)
        barrier(self.dist)
        test = self._final_test()
        self.seconds += time.perf_counter() - self._t_start
        if self.dist.is_main:
            from .plots import plot_curves

            label = "val (EMA weights)" if self.selected == "ema" else "val"
            smoothed = self.tc.label_smoothing > 0
            plot_curves(
                self.history,
                self.run_dir / "curves.png",
                val_label=label,
                train_label="train (label-smoothed loss)" if smoothed else "train",
            )
        return FitResult(
            run_dir=self.run_dir,
            steps=self.step,
            epochs=self.epoch,
            selected=self.selected,
            best_val_top1=self.best_top1,
            best_epoch=self.best_epoch,
            test=test,
            seconds=self.seconds,
            history=self.history,
        )

    def _final_test(self) -> dict[str, float] | None:
        """Evaluate the test split once, with the weights best.pt selected on validation."""
        if self.test_set is None:
            return None
        path = self.best_path if self.best_path.exists() else self.last_path
        ckpt = load_checkpoint(path)
        # After this the trained model (or its EMA) holds the selected weights.
        model = self._eval_model()
        load_checked(model, ckpt["ema"] if self.selected == "ema" else ckpt["model"])
        test = self._evaluate(self.test_set, model)
        record = {
            "kind": "test",
            "step": self.step,
            "checkpoint": path.name,
            "best_epoch": self.best_epoch,
            "weights": self.selected,
            "test_loss": test["loss"],
            "test_top1": test["top1"],
            "test_top5": test["top5"],
            "test_images": test["images"],
        }
        self._metrics_line(record)
        return test
