"""The engine's side of a run's set-up, resolved once: what the :class:`~resnext.engine.Trainer`
takes (:class:`RunSetup`), the config as this device and job run it, the checkpoint a
resume continues, and the run folder.

The engine never builds a model or a dataset: :func:`resnext.training.setup_run` builds
them and calls the resolvers here, in the order that lets every check a user can fail run
before the first file is written. The Trainer then checks nothing again.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from ..checkpoint import LAST, has_checkpoint, load_named, load_newest_intact
from ..config import Config, from_dict, from_stored, merge_overrides, resolve_batch_size
from ..errors import ConfigError
from ..runtime import PRECISIONS, auto_train_precision, check_precision, configure_torch
from .distributed import DistInfo
from .sync_bn import check_sync_bn

SINGLE = DistInfo()  # a single process: no process group


@dataclass(frozen=True)
class Resume:
    """The checkpoint a run continues."""

    path: Path
    checkpoint: dict[str, Any]
    changed: tuple[str, ...] = ()  # config keys that differ from the checkpoint's (allowed ones)


@dataclass
class RunSetup:
    """Everything a :class:`~resnext.engine.Trainer` needs, resolved and checked.

    Built by :func:`resnext.training.setup_run` (or by a test, from values it knows to be
    resolved): ``cfg.train.precision`` is what this device runs (never ``auto``) and
    ``cfg.train.batch_size`` the per-process batch.
    """

    model: nn.Module  # on CPU or already on ``device``; its ``arch`` (if any) is saved
    # transformed datasets yielding (image, label); the train set takes (index, sample_seed)
    # keys (see resnext.data.TransformedDataset). No val set: the last epoch is kept; no
    # test set: no final test.
    train_set: Dataset
    val_set: Dataset | None
    test_set: Dataset | None
    cfg: Config  # the whole of it is stored in every checkpoint
    run_dir: Path  # checkpoints and the run log (written by rank 0 only)
    classes: list[str]  # class names in label order
    preprocess: Mapping[str, Any]  # the evaluation record stored in checkpoints
    device: torch.device
    dist: DistInfo = SINGLE  # this process's place in a DDP job
    # A shard split's fingerprint (its order depends on the pack); None for other readers.
    train_fingerprint: str | None = None
    resume: Resume | None = None  # the checkpoint the Trainer continues from


# -- the config this run uses ------------------------------------------------------------
def find_resume(cfg: Config) -> Path:
    """The checkpoint ``train.resume`` names: a path, or ``auto`` (the run's last.pt, which
    :func:`resolve_run_config` replaces by the newest intact checkpoint beside it)."""
    tc = cfg.train
    out = Path(tc.output_dir)
    if tc.resume != "auto":
        path = Path(tc.resume)  # type: ignore[arg-type]
        if not path.is_file():
            raise ConfigError(f"train.resume={tc.resume!r}: no such checkpoint file")
        return path
    if tc.run_name is not None:
        path = out / tc.run_name / LAST
        if not has_checkpoint(path.parent):
            raise ConfigError(
                f"nothing to resume: {path} does not exist (train.run_name={tc.run_name!r}); "
                "drop --resume to start the run"
            )
        return path
    # lstat: last.pt is a link, made when its checkpoint was (and may point at a lost file)
    found = sorted(out.glob(f"*/{LAST}"), key=lambda p: p.lstat().st_mtime)
    if not found:
        raise ConfigError(
            f"nothing to resume: no run folder with a last.pt under {str(out)!r}; "
            "drop --resume to start a new run, or set train.output_dir / train.run_name"
        )
    return found[-1]


def resolve_run_config(
    cfg: Config,
    *,
    config_given: bool = True,
    overrides: list[str] | None = None,
    say: Callable[[str], None] = lambda _m: None,
) -> tuple[Config, Resume | None]:
    """The config a run will use, and the checkpoint it resumes (if any).

    ``resnext train --resume`` without a recipe continues the run with the checkpoint's own
    config and the given overrides; ``train.max_steps`` is not inherited from it, since it
    is a stop of one session, not part of the recipe. ``train.resume=auto`` takes the newest
    intact checkpoint of the run folder (saying which damaged ones it passed over); a
    checkpoint named by path is taken only if intact.
    """
    if not cfg.train.resume:
        return cfg, None
    path = find_resume(cfg)
    if cfg.train.resume == "auto":
        path, ckpt = load_newest_intact(path.parent, say)
    else:
        ckpt = load_named(path)
    if not config_given:
        base = from_stored(ckpt.get("config")).to_dict()  # read as today's keys
        base["train"]["max_steps"] = None
        cfg = from_dict(merge_overrides(base, [*(overrides or []), f"train.resume={path}"]))
    return cfg, Resume(path, ckpt)


def resolve_train_precision(
    cfg: Config, device: torch.device, ckpt: dict[str, Any] | None = None
) -> tuple[Config, str | None]:
    """The config with ``train.precision=auto`` replaced by what it means on ``device``
    (:func:`~resnext.runtime.auto_train_precision`), and the line that says so. A resumed
    run keeps the precision it started with (its checkpoint's), wherever it resumes."""
    if cfg.train.precision != "auto":
        return cfg, None
    # read as today's keys (a run of an older version stored train.amp)
    stored = from_stored(ckpt.get("config")).train.precision if ckpt is not None else None
    if stored in PRECISIONS:
        precision, why = stored, "the precision the run started with"
        if precision == "fp16" and device.type != "cuda":
            raise ConfigError(
                f"the run trained in fp16 (train.precision auto on a GPU without bf16) and an "
                f"exact resume needs it, which {device.type} cannot run; resume on a CUDA device"
            )
    else:
        precision, why = auto_train_precision(device)
    train_cfg = dataclasses.replace(cfg.train, precision=precision)
    return dataclasses.replace(cfg, train=train_cfg), f"train.precision auto -> {precision}: {why}"


def resolve_train_config(
    cfg: Config,
    device: torch.device,
    dist: DistInfo = SINGLE,
    resume: Resume | None = None,
    say: Callable[[str], None] = print,
) -> Config:
    """The config as this device and job run it, every train-section check done: the
    per-process batch (``train.global_batch_size``), the precision (rank 0's choice for the
    whole job, said where ``auto`` chose it), SyncBatchNorm, the stop. Sets the process's
    threads and deterministic kernels."""
    cfg = resolve_batch_size(cfg, dist.world_size)
    cfg, chosen = resolve_train_precision(cfg, device, resume.checkpoint if resume else None)
    if chosen and dist.enabled:  # one precision for the job: rank 0's choice
        choice = [cfg.train.precision, chosen]
        torch.distributed.broadcast_object_list(choice, src=0)
        cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, precision=choice[0]))
        chosen = choice[1]
    if chosen:
        say(chosen)
    if cfg.train.sync_bn:
        note = check_sync_bn(device, dist)
        if note:
            say(note)
    stop = cfg.train.max_steps
    if stop is not None and stop < 1:
        raise ConfigError(f"train.max_steps must be at least 1, got {stop}")
    if resume is not None and stop is not None and resume.checkpoint["step"] >= stop:
        raise ConfigError(
            f"{resume.path} already stopped at step {resume.checkpoint['step']} and "
            f"train.max_steps is {stop}; resume with a later stop or train.max_steps=null"
        )
    check_precision(cfg.train.precision, device, "train.precision")  # fp16 on CPU: refuse now
    configure_torch(cfg.train.deterministic, cfg.train.threads)
    return cfg


# -- the run folder -----------------------------------------------------------------------
def choose_run_dir(cfg: Config, resume: Resume | None, dist: DistInfo) -> Path:
    """The run folder: ``train.run_name``, the resumed run's, or a new timestamped one
    (rank 0's clock). Refuses to start a new run over an old one; checks (without creating
    anything) that the folder can be made."""
    tc = cfg.train
    if tc.run_name is not None:
        run_dir = Path(tc.output_dir) / tc.run_name
    elif resume is not None:
        run_dir = resume.path.parent
    else:
        name = [f"{cfg.model.name}-{time.strftime('%Y%m%d-%H%M%S')}"]
        if dist.enabled:  # every process must use rank 0's clock
            torch.distributed.broadcast_object_list(name, src=0)
        run_dir = Path(tc.output_dir) / name[0]
    if resume is None and has_checkpoint(run_dir):
        raise ConfigError(
            f"{run_dir} already holds a run (last.pt); add --resume to continue it, "
            "or choose another train.run_name"
        )
    if dist.is_main:
        check_writable(run_dir, create=False)
    return run_dir


def check_writable(run_dir: Path, create: bool) -> None:
    """Fail now, not after an epoch, if the run folder cannot be created or written.

    ``create=False`` only looks (the nearest existing parent must be a writable folder),
    so a run refused for another reason leaves no empty folder behind.
    """
    probe = run_dir
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise ConfigError(
            f"cannot create the run folder {run_dir}: {probe} is a file, not a folder; "
            "set train.output_dir to a writable folder"
        )
    if not os.access(probe, os.W_OK | os.X_OK):
        raise ConfigError(
            f"cannot write to {probe} (no permission), so the run folder {run_dir} cannot be "
            "created; set train.output_dir to a writable folder"
        )
    if not create:
        return
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        test = run_dir / ".write-test"
        test.write_text("ok")
        test.unlink()
    except OSError as e:
        raise ConfigError(
            f"cannot write to the run folder {run_dir} ({e.strerror or e}); "
            "set train.output_dir to a writable folder"
        ) from e
