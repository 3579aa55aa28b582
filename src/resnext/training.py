"""Training as a function: config -> data -> model -> engine, every user check first.

:func:`train` is what ``resnext train`` runs (the command only parses and prints). It is
the one place that wires the config to the data readers, the model registry and the
engine; every check a user can fail (config, output folder, data, weights, resume
checkpoint) runs before the first training step.
"""

from __future__ import annotations

import dataclasses
import gc
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .checkpoint import (
    add_num_batches_tracked,
    extract_state_dict,
    load_checked,
    load_checkpoint,
    read_file,
)
from .config import Config, DataConfig, from_dict, merge_overrides, resolve_batch_size
from .data import Splits, build_splits
from .data.shards import check_train_streams
from .data.splitting import SPLITS_FILE, SplitRecord, recorded_split
from .engine import (
    DistInfo,
    FitResult,
    Trainer,
    barrier,
    check_resume_compatible,
    cleanup,
    init_distributed,
    seed_everything,
)
from .engine.sync_bn import check_sync_bn
from .errors import ConfigError, DataError
from .models import create_model
from .runtime import (
    PRECISIONS,
    auto_train_precision,
    check_precision,
    configure_torch,
    resolve_device,
)


@dataclass
class TrainOutcome:
    """A finished run: the engine's result and where it ran."""

    result: FitResult
    run_dir: Path
    config: Config
    seconds: float  # this session's wall time, set-up included
    is_main: bool  # rank 0 (the process that wrote the files)


def train(
    cfg: Config,
    *,
    config_given: bool = True,
    overrides: list[str] | None = None,
    say: Callable[[str], None] = print,
) -> TrainOutcome:
    """Check everything, build data and model, run the engine. ``config_given`` False and a
    resume: continue with the checkpoint's own recipe (plus ``overrides``)."""
    t_start = time.perf_counter()
    device = resolve_device(cfg.train.device, what="train.device")
    dist = init_distributed(device)
    try:
        outcome = _train(cfg, device, dist, config_given, overrides or [], t_start, say)
        # Every process done with its collectives before the group is torn down: a gloo
        # process that destroyed it while its peer still ran aborted at exit (seen in CI).
        # Not on an error: a peer stuck elsewhere would make the barrier hang.
        barrier(dist)
        return outcome
    finally:
        gc.collect()  # the run's objects (DDP and its reducer) go before their process group
        cleanup(dist)


# -- run folder and resume target -------------------------------------------------------
def _find_resume(cfg: Config) -> Path:
    """The checkpoint ``train.resume`` names: a path, or ``auto`` (the run's last.pt)."""
    tc = cfg.train
    out = Path(tc.output_dir)
    if tc.resume != "auto":
        path = Path(tc.resume)  # type: ignore[arg-type]
        if not path.is_file():
            raise ConfigError(f"train.resume={tc.resume!r}: no such checkpoint file")
        return path
    if tc.run_name is not None:
        path = out / tc.run_name / "last.pt"
        if not path.is_file():
            raise ConfigError(
                f"nothing to resume: {path} does not exist (train.run_name={tc.run_name!r}); "
                "drop --resume to start the run"
            )
        return path
    found = sorted(out.glob("*/last.pt"), key=lambda p: p.stat().st_mtime)
    if not found:
        raise ConfigError(
            f"nothing to resume: no run folder with a last.pt under {str(out)!r}; "
            "drop --resume to start a new run, or set train.output_dir / train.run_name"
        )
    return found[-1]


def _run_dir(cfg: Config, resume: Path | None, dist: DistInfo) -> Path:
    tc = cfg.train
    if tc.run_name is not None:
        run_dir = Path(tc.output_dir) / tc.run_name
    elif resume is not None:
        run_dir = resume.parent
    else:
        name = [f"{cfg.model.name}-{time.strftime('%Y%m%d-%H%M%S')}"]
        if dist.enabled:  # every process must use rank 0's clock
            torch.distributed.broadcast_object_list(name, src=0)
        run_dir = Path(tc.output_dir) / name[0]
    if resume is None and (run_dir / "last.pt").exists():
        raise ConfigError(
            f"{run_dir} already holds a run (last.pt); add --resume to continue it, "
            "or choose another train.run_name"
        )
    return run_dir


def _check_writable(run_dir: Path, create: bool) -> None:
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


def resolve_run_config(
    cfg: Config, *, config_given: bool = True, overrides: list[str] | None = None
) -> tuple[Config, Path | None, dict[str, Any] | None]:
    """The config a run will use, the checkpoint it resumes (if any) and its contents.

    ``resnext train --resume`` without a recipe continues the run with the checkpoint's own
    config and the given overrides; ``train.max_steps`` is not inherited from it, since it
    is a stop of one session, not part of the recipe.
    """
    resume = _find_resume(cfg) if cfg.train.resume else None
    if resume is None:
        return cfg, None, None
    ckpt = load_checkpoint(resume)
    if not config_given:
        base = from_dict(ckpt.get("config") or {}).to_dict()  # old key names read as today's
        base["train"]["max_steps"] = None
        cfg = from_dict(merge_overrides(base, [*(overrides or []), f"train.resume={resume}"]))
    return cfg, resume, ckpt


def _resumed_splits(data: DataConfig, run_folder: Path) -> Splits:
    """The splits a resumed run reads: where the reader carves them from one folder of
    classes, the split the run recorded (``run_folder/splits.json``, or the record
    ``data.split_file`` names), never a new carve of files that may have changed since."""
    own = run_folder / SPLITS_FILE
    used = recorded_split(data, run_folder) if data.split_file is None else data
    splits = build_splits(used)
    record = splits.info.get("split_record")
    if record is None:  # the reader's splits are fixed (split folders, a pack, ...)
        return splits
    if used.split_file is None:
        raise DataError(
            f"the run in {run_folder} carved its splits from one folder of classes, but its "
            f"record {own} is missing; carving them again from the files under data.root "
            "could move images the model trained on into val or test. Restore "
            f"{SPLITS_FILE} into the run folder (from a copy of it), or pass "
            "data.split_file=PATH naming the run's record"
        )
    given = Path(used.split_file).expanduser()
    if own.is_file() and given.resolve() != own.resolve():
        kept = SplitRecord.read(own)
        if (kept.classes, kept.files) != (record.classes, record.files):
            raise DataError(
                f"data.split_file={used.split_file!r} records another split than the run's "
                f"own {own}: the run cannot continue exactly on other files; drop "
                "data.split_file to resume on the run's record"
            )
    return splits


def resolve_train_precision(
    cfg: Config, device: torch.device, ckpt: dict[str, Any] | None = None
) -> tuple[Config, str | None]:
    """The config with ``train.precision=auto`` replaced by what it means on ``device``
    (:func:`~resnext.runtime.auto_train_precision`), and the line that says so. A resumed
    run keeps the precision it started with (its checkpoint's), wherever it resumes."""
    if cfg.train.precision != "auto":
        return cfg, None
    # read as today's keys (a run of an older version stored train.amp)
    stored = from_dict(ckpt.get("config") or {}).train.precision if ckpt is not None else None
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


# -- the job ------------------------------------------------------------------------------
def _train(
    cfg: Config,
    device: torch.device,
    dist: DistInfo,
    config_given: bool,
    overrides: list[str],
    t_start: float,
    say: Callable[[str], None],
) -> TrainOutcome:
    if not dist.is_main:
        say = _silent
    cfg, resume, ckpt = resolve_run_config(cfg, config_given=config_given, overrides=overrides)
    cfg = resolve_batch_size(cfg, dist.world_size)  # train.global_batch_size, if set
    cfg, chosen = resolve_train_precision(cfg, device, ckpt)
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
    if ckpt is not None and cfg.train.max_steps is not None and ckpt["step"] >= cfg.train.max_steps:
        raise ConfigError(
            f"{resume} already stopped at step {ckpt['step']} and train.max_steps is "
            f"{cfg.train.max_steps}; resume with a later stop or train.max_steps=null"
        )
    check_precision(cfg.train.precision, device, "train.precision")  # fp16 on CPU: refuse now
    configure_torch(cfg.train.deterministic, cfg.train.threads)
    run_dir = _run_dir(cfg, resume, dist)
    if dist.is_main:
        _check_writable(run_dir, create=False)

    splits = _resumed_splits(cfg.data, resume.parent) if resume else build_splits(cfg.data)
    for note in splits.info.get("notes", ()):
        say(f"note: {note}")
    classes = list(splits.classes)
    if cfg.model.num_classes is not None and cfg.model.num_classes != len(classes):
        raise ConfigError(
            f"model.num_classes={cfg.model.num_classes} but the {cfg.data.name} dataset has "
            f"{len(classes)} classes; leave model.num_classes unset (null) to use the dataset's"
        )
    if len(splits.train) == 0:  # type: ignore[arg-type]
        raise DataError(f"the train split of {cfg.data.name} is empty: nothing to train on")
    check_train_streams(splits.train, dist.world_size, cfg.data.num_workers)  # shards only
    # An empty val or test split (e.g. data.val_fraction=0) is no split: the run keeps the
    # last epoch, or has no final test. Said now, not found out after training.
    for name in ("val", "test"):
        split = getattr(splits, name)
        if split is not None and len(split) == 0:
            setattr(splits, name, None)
            what = "the last epoch is kept" if name == "val" else "there is no final test"
            say(f"the {name} split of {cfg.data.name} is empty: {what}")

    seed_everything(cfg.train.seed)  # the weight init depends on the seed only
    try:
        model = create_model(
            cfg.model.name,
            num_classes=len(classes),
            block_form=cfg.model.block_form,
            zero_init_last_bn=cfg.model.zero_init_last_bn,
            stem_width=cfg.model.stem_width,
            widths=cfg.model.widths,
        )
    except ValueError as e:
        raise ConfigError(f"model: {e}") from e
    if cfg.model.pretrained is not None and ckpt is None:
        state = extract_state_dict(read_file(cfg.model.pretrained))
        add_num_batches_tracked(state)  # files saved before PyTorch 0.4.1 have none
        fc = state.get("fc.weight")
        skip = fc is not None and tuple(fc.shape) != tuple(model.fc.weight.shape)
        load_checked(model, state, skip_classifier=skip)
        say(
            f"started from {cfg.model.pretrained}"
            + (" (classifier re-initialised for the new classes)" if skip else "")
        )

    changed: list[str] = []
    if ckpt is not None:
        changed = check_resume_compatible(ckpt, cfg, model, classes, resume)  # type: ignore[arg-type]

    if dist.is_main:
        _check_writable(run_dir, create=True)
    trainer = Trainer(
        model,
        splits.train,
        splits.val,
        splits.test,
        cfg,
        run_dir,
        classes=classes,
        preprocess=splits.preprocess.to_dict(),
        device=device,
        dist=dist,
    )
    if ckpt is not None:
        trainer.load_state(ckpt, resume)
    if dist.is_main:
        (run_dir / "config.yaml").write_text(cfg.to_yaml())
        record = splits.info.get("split_record")
        if record is not None:  # splits carved from one folder: the run keeps their file lists
            record.write(run_dir / SPLITS_FILE)
            say(f"{splits.info['split']}; recorded in {run_dir / SPLITS_FILE}")

    n_params = sum(p.numel() for p in model.parameters())
    sizes = " / ".join(
        f"{len(ds)} {name}"  # type: ignore[arg-type]
        for name, ds in (("train", splits.train), ("val", splits.val), ("test", splits.test))
        if ds is not None
    )
    threads = f", {torch.get_num_threads()} threads" if device.type == "cpu" else ""
    say(
        f"{cfg.model.name} (block form {cfg.model.block_form}, {n_params / 1e6:.2f}M params) on "
        f"{cfg.data.name}: {sizes} images, {len(classes)} classes"
    )
    stop = f", stopping at step {cfg.train.max_steps}" if cfg.train.max_steps else ""
    tc = cfg.train
    global_batch = dist.world_size * tc.batch_size * tc.accumulate_steps
    base = cfg.optim.lr_base_batch
    scaling = f" (optim.lr {cfg.optim.lr:g} x {global_batch}/{base})" if base else ""
    say(
        f"device {device}{threads}, {tc.precision}, {dist.world_size} process(es) x batch "
        f"{tc.batch_size} x {tc.accumulate_steps} accumulation = global batch {global_batch}, "
        f"lr {trainer.lr:g}{scaling}, {tc.epochs} epochs = {trainer.total_steps} steps{stop}; "
        f"run folder {run_dir}"
    )
    if ckpt is not None:
        replay = ""
        if trainer.progress.epoch_step and splits.info.get("shards"):
            replay = (
                f"; the shard streams replay epoch {trainer.progress.epoch + 1} up to batch "
                f"{trainer.progress.epoch_step}, reading those samples without decoding them"
            )
        say(
            f"resuming {resume} at epoch {trainer.progress.epoch} + "
            f"{trainer.progress.epoch_step} batches (step {trainer.progress.step})"
            + (f"; changed: {', '.join(changed)}" if changed else "")
            + replay
        )
    sys.stdout.flush()
    result = trainer.fit()
    return TrainOutcome(result, run_dir, cfg, time.perf_counter() - t_start, dist.is_main)


def _silent(message: str) -> None:
    """Processes other than rank 0 print nothing."""
