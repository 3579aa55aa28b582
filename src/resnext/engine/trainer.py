"""The training loop: it receives a model and datasets, never builds them.

One :class:`Trainer` runs SGD with a per-step schedule, gradient accumulation,
clipping, mixed precision, an EMA, DDP, validation-based model selection and a single
final test, writing ``last.pt`` / ``best.pt`` and the run log (:class:`RunLog`) into its
run folder. Everything a run depends on is in ``last.pt`` (written at every epoch end,
every ``train.checkpoint_every_steps`` steps and when ``train.max_steps`` stops the run),
so a run stopped at any point resumes to the same weights, bit for bit on CPU with
deterministic settings.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from ..checkpoint import copy_checkpoint, load_checked, load_checkpoint, make_checkpoint
from ..checkpoint import save_step_checkpoint as write_checkpoint
from ..data import (
    LoaderOrder,
    make_loader,
    set_loader_epoch,
)
from ..errors import ConfigError, DataError, TrainingError
from .distributed import all_reduce_sum, barrier, broadcast_buffers, job_bad_files, rank0_printer
from .ema import recompute_loader
from .preemption import StopSignals, stop_record
from .progress import FitResult, Progress, epoch_line
from .rng import get_rng_state, set_rng_state
from .runlog import RunLog
from .setup import RunSetup
from .step import Stepper
from .sync_bn import convert_sync_batchnorm
from .validation import SplitEvaluator


class NonFiniteLossError(TrainingError):
    """The loss became NaN or infinite; the message names the step and the last good checkpoint."""


class Trainer:
    """Trains ``setup.model`` on its train set, selects on val, tests once on test.

    Args:
        setup: the resolved run (:class:`~resnext.engine.setup.RunSetup`); nothing in it is
            checked again here. Its ``resume``, if any, is loaded at once (:meth:`load_state`).
        log: where one-line messages go (the progress bar's ``write`` by default).
    """

    def __init__(self, setup: RunSetup, *, log: Callable[[str], None] | None = None) -> None:
        cfg, device, dist = setup.cfg, setup.device, setup.dist
        self.cfg, self.tc = cfg, cfg.train
        self.train_set, self.val_set, self.test_set = setup.train_set, setup.val_set, setup.test_set
        self.run_dir = Path(setup.run_dir)
        self.classes, self.preprocess = list(setup.classes), dict(setup.preprocess)
        self.train_fingerprint = setup.train_fingerprint
        self.device, self.dist = device, dist
        self._say = rank0_printer(log, dist)

        self.model = setup.model.to(device)
        if self.tc.sync_bn:
            self.model = convert_sync_batchnorm(self.model, device, dist)
        if self.tc.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        per_rank = math.ceil(len(self.train_set) / dist.world_size)  # type: ignore[arg-type]
        self.batches_per_epoch = math.ceil(per_rank / self.tc.batch_size)
        self.steps_per_epoch = math.ceil(self.batches_per_epoch / self.tc.accumulate_steps)
        # The schedule spans the recipe's epochs; train.max_steps only stops early, so a
        # stopped run resumed without it continues exactly as the uninterrupted run.
        self.total_steps = self.tc.epochs * self.steps_per_epoch
        self.stepper = Stepper(
            self.model,
            cfg,
            steps_per_epoch=self.steps_per_epoch,
            total_steps=self.total_steps,
            device=device,
            dist=dist,
            # a plain function, not the bound self.log: a Stepper -> Trainer reference cycle
            # kept DDP alive past the process group's teardown (gloo aborted at exit)
            log=self._say,
        )
        self.ema, self.lr = self.stepper.ema, self.stepper.lr

        self.progress = Progress(epoch_sums=torch.zeros(3, dtype=torch.float64, device=device))
        self.resumed_from: Path | None = None
        # One train loader for the whole run (its workers persist), made now: a shard split
        # with fewer shards than the job's streams is refused before the run folder is made.
        self.train_loader = make_loader(
            self.train_set,
            self.tc.batch_size,
            LoaderOrder(
                shuffle=True,
                seed=self.tc.seed,
                rank=self.dist.rank,
                world_size=self.dist.world_size,
            ),
            num_workers=self.cfg.data.num_workers,
            workers_ignore=self.tc.stop_signals,  # the run stops at a step, not its workers
        )
        self.evaluate = SplitEvaluator(
            {"val": self.val_set, "test": self.test_set},
            batch_size=self.tc.batch_size * 2,
            num_workers=cfg.data.num_workers,
            num_classes=len(self.classes),
            device=device,
            precision=self.tc.precision,
            channels_last=self.tc.channels_last,
            dist=dist,
            workers_ignore=self.tc.stop_signals,
        )
        self.runlog: RunLog | None = None
        self.stop = StopSignals(self.tc.stop_signals, dist, device)  # preemption (while fit runs)
        self._ema_bn_step: int | None = None  # the step the EMA's BN statistics were measured at
        if setup.resume is not None:
            self.load_state(setup.resume.checkpoint, setup.resume.path)

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
        """The checkpoint payload (see :mod:`resnext.checkpoint.checkpoints` for the keys)."""
        return make_checkpoint(
            self.model,
            classes=self.classes,
            preprocess=self.preprocess,
            config=self.cfg.to_dict(),
            ema=self.ema.state_dict() if self.ema is not None else None,
            training={
                **self.stepper.state_dict(),
                **self.progress.counters(),
                "rng": get_rng_state(),
            },
            metrics={
                **self.progress.metrics(),
                "selected": self.selected,
                "world_size": self.dist.world_size,
                "train_images": len(self.train_set),  # type: ignore[arg-type]
                **({"train_shards": self.train_fingerprint} if self.train_fingerprint else {}),
            },
        )

    def load_state(self, ckpt: dict[str, Any], path: str | Path | None = None) -> None:
        """Continue from a checkpoint written by :meth:`state` (weights, optimizer, RNG...)."""
        metrics = ckpt.get("metrics") or {}
        if metrics.get("world_size", 1) != self.dist.world_size:
            raise ConfigError(
                f"the checkpoint was written by {metrics.get('world_size')} processes and this "
                f"run has {self.dist.world_size}; resume with the same number of processes "
                "(the data order of each process depends on it)"
            )
        n, was = len(self.train_set), metrics.get("train_images")  # type: ignore[arg-type]
        if was is not None and was != n:
            raise DataError(
                f"the train split now has {n} images and the checkpoint's run had {was}: "
                f"data.root={self.cfg.data.root!r} does not hold the run's data, and the run "
                "cannot continue exactly; point data.root at the same dataset"
            )
        was, now = metrics.get("train_shards"), self.train_fingerprint
        if was is not None and was != now:
            raise DataError(
                f"data.root={self.cfg.data.root!r} is not the pack the checkpoint's run read "
                f"(shard fingerprint {now} vs {was}): the same images packed into "
                "other shards come in another order, so the run cannot continue exactly; "
                "point data.root at the run's own pack"
            )
        load_checked(self.model, ckpt["model"])
        self.stepper.load_state_dict(ckpt)
        self.progress = Progress.from_checkpoint(ckpt, self.device, with_sums=self.dist.is_main)
        set_rng_state(ckpt["rng"])
        self.resumed_from = Path(path) if path is not None else None

    # -- logging -----------------------------------------------------------------------
    def log(self, message: str) -> None:
        """Print ``message`` on rank 0 (through the caller's ``log``, else tqdm's writer)."""
        self._say(message)

    def _record(self, record: dict[str, Any]) -> None:
        if self.runlog is not None:
            self.runlog.write(record)

    # -- data --------------------------------------------------------------------------
    def _train_loader(self) -> DataLoader:
        """The run's train loader, re-seeded for the current epoch (and batch) via its sampler."""
        loader = self.train_loader
        set_loader_epoch(loader, self.progress.epoch, self.progress.epoch_step * self.tc.batch_size)
        return loader

    def _eval_model(self) -> nn.Module:
        return self.ema.module if self.selected == "ema" else self.model

    def _refresh_ema_bn(self) -> None:
        """``train.ema_bn=recompute``: measure the EMA's BN statistics for its own weights on
        the first ``train.ema_bn_batches`` batches of a fixed pass over this rank's train
        samples (epoch 0's order) before the EMA is validated or saved. The images go through
        the eval transform, as validation and deployment see them: measured against the train
        transform it scored as well or better (docs/training.md). Without sync BN only rank 0
        measures: validation and checkpoints take its statistics."""
        if (
            self.ema is None
            or self.ema.bn != "recompute"
            or self._ema_bn_step == self.progress.step
            or (not self.dist.is_main and not self.tc.sync_bn)
        ):
            return
        loader = recompute_loader(
            self.train_set,
            self.preprocess,
            self.tc.batch_size,
            self.tc.seed,
            self.dist.rank,
            self.dist.world_size,
            num_workers=self.cfg.data.num_workers,
            workers_ignore=self.tc.stop_signals,
        )
        self.ema.recompute_bn(loader, self.tc.ema_bn_batches, self.device, self.tc.channels_last)
        self._ema_bn_step = self.progress.step

    # -- the loop ----------------------------------------------------------------------
    def _save_last(self) -> None:
        """Write last.pt (rank 0). Every rank calls it: under DDP the running sums of the
        epoch in progress are summed over processes first, so last.pt holds the whole job's
        (rank 0 takes them back on resume, the other ranks start from zero)."""
        self._refresh_ema_bn()
        own = self.progress.epoch_sums
        if self.dist.enabled:
            self.progress.epoch_sums = all_reduce_sum(own.clone(), self.dist)
        if self.dist.is_main:
            write_checkpoint(self.run_dir, self.state(), self.tc.keep_checkpoints)
        self.progress.epoch_sums = own

    def _check_finite(self, loss_sum: torch.Tensor, batch: int) -> None:
        p = self.progress
        if not torch.isfinite(loss_sum).all():
            kind = "NaN" if torch.isnan(loss_sum).any() else "infinite"
            where = (
                f"the last good checkpoint {self.last_path} is kept"
                if self.last_path.exists()
                else "no checkpoint had been written yet"
            )
            self._record({"kind": "error", "epoch": p.epoch + 1, "step": p.step + 1, "loss": kind})
            raise NonFiniteLossError(
                f"the loss became {kind} at step {p.step + 1} (epoch {p.epoch + 1}, "
                f"batch {batch}/{self.batches_per_epoch}); training stopped and {where}. "
                "Lower optim.lr, add schedule.warmup_epochs or train.clip_grad_norm, "
                "or check the data."
            )

    def _train_epoch(self, bar: tqdm) -> bool:
        """Run the rest of the current epoch; True if ``max_steps`` or a stop signal stopped it."""
        p = self.progress
        tc, accum, n_batches = self.tc, self.tc.accumulate_steps, self.batches_per_epoch
        self.model.train()
        group = torch.zeros(2, dtype=torch.float64, device=self.device)  # loss sum, images
        t0, images_done = time.perf_counter(), 0
        for x, y in self._train_loader():
            b = p.epoch_step  # index of this micro-batch in the epoch
            group_start = (b // accum) * accum
            group_size = min(accum, n_batches - group_start)
            last_micro = b + 1 - group_start == group_size
            x = x.to(self.device, non_blocking=True)
            y = torch.as_tensor(y).to(self.device, non_blocking=True)
            if tc.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            loss, logits = self.stepper.accumulate(x, y, group_size, last_micro)
            with torch.no_grad():
                n = len(y)
                group[0] += loss.double() * n
                group[1] += n
                p.epoch_sums[0] += loss.double() * n
                p.epoch_sums[1] += (logits.argmax(1) == y).sum()
                p.epoch_sums[2] += n
            p.epoch_step = b + 1
            images_done += n
            if not last_micro:
                continue

            all_reduce_sum(group, self.dist)
            self._check_finite(group[0], b + 1)
            lr = self.stepper.step()
            p.step += 1
            loss_value = float(group[0] / group[1])
            group.zero_()
            bar.update(1)
            bar.set_postfix_str(
                f"epoch {p.epoch + 1}/{tc.epochs} loss {loss_value:.3f} lr {lr:.3g}",
                refresh=False,
            )
            if tc.log_every and p.step % tc.log_every == 0:
                dt = time.perf_counter() - t0
                self._record(
                    {
                        "kind": "train",
                        "epoch": p.epoch + 1,
                        "step": p.step,
                        "loss": loss_value,
                        "lr": lr,
                        "img_per_s": images_done * self.dist.world_size / max(dt, 1e-9),
                    }
                )
                t0, images_done = time.perf_counter(), 0
            if (tc.max_steps is not None and p.step >= tc.max_steps) or self.stop.poll():
                return True
            if (
                tc.checkpoint_every_steps
                and p.step % tc.checkpoint_every_steps == 0
                and p.epoch_step < n_batches
            ):
                self._save_last()
        return False

    def _end_of_epoch(self) -> None:
        """Validate, log, and write last.pt (and best.pt if validation improved)."""
        p = self.progress
        sums = p.epoch_sums.clone()
        all_reduce_sum(sums, self.dist)
        images = max(1.0, float(sums[2]))
        record: dict[str, Any] = {
            "kind": "epoch",
            "epoch": p.epoch,
            "step": p.step,
            "train_loss": float(sums[0]) / images,
            "train_top1": 100.0 * float(sums[1]) / images,
            "lr": self.stepper.current_lr,
        }
        due = p.epoch % self.tc.eval_every == 0 or p.epoch == self.tc.epochs
        improved = False
        if self.val_set is not None and due:
            self._refresh_ema_bn()
            broadcast_buffers(self._eval_model(), self.dist)  # validate what rank 0 saves
            val = self.evaluate("val", self._eval_model())
            record.update(val_loss=val["loss"], val_top1=val["top1"], val_top5=val["top5"])
            if self.ema is not None:  # both weights' val top-1, so a gap between them shows
                other = self.model if self.selected == "ema" else self.ema.module
                broadcast_buffers(other, self.dist)
                record[f"val_top1_{self.selected}"] = val["top1"]
                other_name = "model" if self.selected == "ema" else "ema"
                record[f"val_top1_{other_name}"] = self.evaluate("val", other)["top1"]
            if p.best_top1 is None or val["top1"] > p.best_top1:
                p.best_top1, p.best_epoch, improved = val["top1"], p.epoch, True
        elif self.val_set is None:
            p.best_epoch, improved = p.epoch, True  # no val split: keep the latest
        skipped = job_bad_files(self.train_set, self.dist)
        if skipped.count:
            record["skipped_files"] = skipped.count
        record["seconds"] = p.seconds + (time.perf_counter() - self._t_start)
        p.epoch_sums.zero_()
        p.history.append(record)
        self._record(record)
        self.log(epoch_line(record, self.tc.epochs, improved, self.selected))
        if skipped.count:
            self.log(f"epoch {p.epoch:>3}: {skipped}")
        self._checkpoint(improved)

    def _checkpoint(self, improved: bool = False) -> None:
        self.progress.seconds += time.perf_counter() - self._t_start
        self._t_start = time.perf_counter()
        self._save_last()
        if improved and self.dist.is_main:
            copy_checkpoint(self.last_path, self.best_path)

    def fit(self) -> FitResult:
        """Train to ``train.epochs`` (or ``max_steps``), then test the selected checkpoint."""
        if self.dist.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        resume_step = self.progress.step if self.resumed_from is not None else None
        self.runlog = RunLog(
            self.run_dir,
            enabled=self.dist.is_main,
            tensorboard=self.tc.tensorboard,
            resume_step=resume_step,
        )
        with self.runlog, self.stop:
            return self._fit()

    def _fit(self) -> FitResult:
        p = self.progress
        self._t_start = time.perf_counter()
        bar = tqdm(
            total=self.total_steps,
            initial=min(p.step, self.total_steps),
            desc="train",
            unit="step",
            disable=not (self.tc.progress and self.dist.is_main),
            dynamic_ncols=True,
        )
        with bar:
            while p.epoch < self.tc.epochs:
                if self.tc.max_steps is not None and p.step >= self.tc.max_steps:
                    break
                if self.stop.poll() is not None:  # between epochs: the epoch end wrote last.pt
                    self._stop_here(write=p.step == 0)
                    break
                stopped = self._train_epoch(bar)
                if stopped and p.epoch_step < self.batches_per_epoch:
                    # A stop, not an epoch end: no validation, so selection is untouched.
                    self._stop_here(write=True)
                    break
                p.epoch, p.epoch_step = p.epoch + 1, 0
                self._end_of_epoch()
        barrier(self.dist)
        # A stop signal leaves at once: the scheduler's grace time is short.
        test, tested = self._final_test() if self.stop.agreed is None else (None, None)
        p.seconds += time.perf_counter() - self._t_start
        if self.runlog is not None:
            label = "val (EMA weights)" if self.selected == "ema" else "val"
            smoothed = self.tc.label_smoothing > 0
            self.runlog.curves(
                p.history,
                val_label=label,
                train_label="train (label-smoothed loss)" if smoothed else "train",
            )
        return p.result(
            self.run_dir, self.batches_per_epoch, self.selected, test=test, tested=tested,
            stopped_by=self.stop.agreed.name if self.stop.agreed else None,
        )  # fmt: skip

    def _stop_here(self, write: bool) -> None:
        """Record why the run stops (train.max_steps or a stop signal); write last.pt."""
        self._record(stop_record(self.progress, self.stop.agreed))
        if write:
            self._checkpoint()
        if self.stop.agreed is not None:
            self.log(
                f"{self.stop.agreed.name}: stopped at step {self.progress.step} ({self.last_path})"
            )

    def _final_test(self) -> tuple[dict[str, float] | None, str | None]:
        """Evaluate the test split once, with the weights best.pt selected on validation
        (last.pt's when no epoch finished)."""
        if self.test_set is None:
            return None, None
        path = self.best_path if self.best_path.exists() else self.last_path
        ckpt = load_checkpoint(path)
        # After this the trained model (or its EMA) holds the selected weights.
        model = self._eval_model()
        load_checked(model, ckpt["ema"] if self.selected == "ema" else ckpt["model"])
        # In fp32 whatever the training precision: the score `resnext eval` reproduces with
        # its defaults, and what the checkpoint gives where it is deployed.
        test = self.evaluate("test", model, precision="fp32")
        where = {"step": self.progress.step, "checkpoint": path.name}
        info = {"best_epoch": self.progress.best_epoch, "weights": self.selected}
        info["precision"] = "fp32"
        self._record({"kind": "test", **where, **info, **{f"test_{k}": v for k, v in test.items()}})
        return test, path.name
