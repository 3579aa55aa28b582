"""Training as a function: config -> data -> model -> engine, every user check first.

:func:`train` is what ``resnext train`` runs (the command only parses and prints).
:func:`setup_run` is the one set-up step: it resolves the config through
:mod:`resnext.engine.setup`, builds the data and the model (which the engine never does),
loads pretrained weights, and returns the :class:`~resnext.engine.setup.RunSetup` the
:class:`~resnext.engine.Trainer` runs without checking anything again. Every check a user
can fail (config, output folder, data, weights, resume checkpoint) runs before the run
folder is written.
"""

from __future__ import annotations

import dataclasses
import gc
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .checkpoint import (
    add_num_batches_tracked,
    extract_state_dict,
    load_checked,
    read_file,
)
from .config import Config, DataConfig
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
from .engine.peers import peer_failures
from .engine.restart import resolve_restart
from .engine.setup import (
    Resume,
    RunSetup,
    check_writable,
    choose_run_dir,
    resolve_run_config,
    resolve_train_config,
)
from .errors import ConfigError, DataError
from .models import build_model
from .runtime import resolve_device


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
    dist = init_distributed(device, cfg.train.dist_timeout_s)
    try:
        if not dist.is_main:
            say = _silent
        setup, splits = setup_run(
            cfg, device, dist, config_given=config_given, overrides=overrides, say=say
        )
        trainer = Trainer(setup)
        _write_run_folder(setup, splits, say)
        for line in _opening_lines(setup, trainer):
            say(line)
        sys.stdout.flush()
        with peer_failures(dist, cfg.train.dist_timeout_s, lambda: trainer.progress):
            result = trainer.fit()
            outcome = TrainOutcome(
                result, setup.run_dir, setup.cfg, time.perf_counter() - t_start, dist.is_main
            )
            # Every process done with its collectives before the group is torn down: a gloo
            # process that destroyed it while its peer still ran aborted at exit (seen in CI).
            # Not on an error: a peer stuck elsewhere would make the barrier hang.
            barrier(dist)
        return outcome
    finally:
        gc.collect()  # the run's objects (DDP and its reducer) go before their process group
        cleanup(dist)


def setup_run(
    cfg: Config,
    device: torch.device,
    dist: DistInfo,
    *,
    config_given: bool = True,
    overrides: list[str] | None = None,
    say: Callable[[str], None] = print,
) -> tuple[RunSetup, Splits]:
    """Resolve the run once: its config (resume, batch, precision), run folder, data, model
    and pretrained weights, each check before the next costly step. Returns the set-up and
    the splits it was built from (their record and notes go into the run folder)."""
    cfg, overrides, restarted = resolve_restart(cfg, overrides or [])  # torchrun/SLURM restart
    if restarted:
        say(restarted)
    cfg, resume = resolve_run_config(cfg, config_given=config_given, overrides=overrides, say=say)
    cfg = resolve_train_config(cfg, device, dist, resume, say)
    run_dir = choose_run_dir(cfg, resume, dist)
    splits = _build_data(cfg, resume, dist, say)
    classes = list(splits.classes)
    seed_everything(cfg.train.seed)  # the weight init depends on the seed only
    model = _build_model(cfg, len(classes), resume, say)
    if resume is not None:
        changed = check_resume_compatible(resume.checkpoint, cfg, model, classes, resume.path)
        resume = dataclasses.replace(resume, changed=tuple(changed))
    setup = RunSetup(
        model=model,
        train_set=splits.train,
        val_set=splits.val,
        test_set=splits.test,
        cfg=cfg,
        run_dir=run_dir,
        classes=classes,
        preprocess=splits.preprocess.to_dict(),
        device=device,
        dist=dist,
        train_fingerprint=getattr(splits.train, "fingerprint", None),
        resume=resume,
    )
    return setup, splits


# -- data -----------------------------------------------------------------------------------
def _build_data(
    cfg: Config, resume: Resume | None, dist: DistInfo, say: Callable[[str], None]
) -> Splits:
    """The run's splits, checked: the dataset's classes against ``model.num_classes``, a
    train split to train on, enough shards for the job's streams. An empty val or test split
    (e.g. ``data.val_fraction=0``) is no split: the run keeps the last epoch, or has no
    final test; said now, not found out after training."""
    splits = _resumed_splits(cfg.data, resume.path.parent) if resume else build_splits(cfg.data)
    for note in splits.info.get("notes", ()):
        say(f"note: {note}")
    n_classes = len(splits.classes)
    if cfg.model.num_classes is not None and cfg.model.num_classes != n_classes:
        raise ConfigError(
            f"model.num_classes={cfg.model.num_classes} but the {cfg.data.name} dataset has "
            f"{n_classes} classes; leave model.num_classes unset (null) to use the dataset's"
        )
    if len(splits.train) == 0:  # type: ignore[arg-type]
        raise DataError(f"the train split of {cfg.data.name} is empty: nothing to train on")
    check_train_streams(splits.train, dist.world_size, cfg.data.num_workers)  # shards only
    for name in ("val", "test"):
        split = getattr(splits, name)
        if split is not None and len(split) == 0:
            setattr(splits, name, None)
            what = "the last epoch is kept" if name == "val" else "there is no final test"
            say(f"the {name} split of {cfg.data.name} is empty: {what}")
    return splits


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


# -- model ----------------------------------------------------------------------------------
def _build_model(
    cfg: Config, num_classes: int, resume: Resume | None, say: Callable[[str], None]
) -> nn.Module:
    """The network of ``cfg.model``, started from ``model.pretrained`` on a new run (a
    resume loads its checkpoint instead, in the Trainer)."""
    try:
        model = build_model(cfg.model, num_classes)
    except ValueError as e:
        raise ConfigError(f"model: {e}") from e
    if cfg.model.pretrained is not None and resume is None:
        state = extract_state_dict(read_file(cfg.model.pretrained))
        add_num_batches_tracked(state)  # files saved before PyTorch 0.4.1 have none
        fc = state.get("fc.weight")
        skip = fc is not None and tuple(fc.shape) != tuple(model.fc.weight.shape)
        load_checked(model, state, skip_classifier=skip)
        say(
            f"started from {cfg.model.pretrained}"
            + (" (classifier re-initialised for the new classes)" if skip else "")
        )
    return model


# -- the run folder and the opening lines ---------------------------------------------------
def _write_run_folder(setup: RunSetup, splits: Splits, say: Callable[[str], None]) -> None:
    """Rank 0 makes the run folder and writes the resolved ``config.yaml`` and, where the
    splits were carved from one folder of classes, their file lists (``splits.json``)."""
    if not setup.dist.is_main:
        return
    run_dir = setup.run_dir
    check_writable(run_dir, create=True)
    (run_dir / "config.yaml").write_text(setup.cfg.to_yaml())
    record = splits.info.get("split_record")
    if record is not None:  # splits carved from one folder: the run keeps their file lists
        record.write(run_dir / SPLITS_FILE)
        say(f"{splits.info['split']}; recorded in {run_dir / SPLITS_FILE}")


def _opening_lines(setup: RunSetup, trainer: Trainer) -> list[str]:
    """What the run says before its first step: model and data, the job's batch, lr and
    length, and where a resume continues."""
    cfg, tc, dist, device = setup.cfg, setup.cfg.train, setup.dist, setup.device
    n_params = sum(p.numel() for p in setup.model.parameters())
    sizes = " / ".join(
        f"{len(ds)} {name}"  # type: ignore[arg-type]
        for name, ds in (
            ("train", setup.train_set),
            ("val", setup.val_set),
            ("test", setup.test_set),
        )
        if ds is not None
    )
    threads = f", {torch.get_num_threads()} threads" if device.type == "cpu" else ""
    stop = f", stopping at step {tc.max_steps}" if tc.max_steps else ""
    global_batch = dist.world_size * tc.batch_size * tc.accumulate_steps
    base = cfg.optim.lr_base_batch
    scaling = f" (optim.lr {cfg.optim.lr:g} x {global_batch}/{base})" if base else ""
    lines = [
        f"{cfg.model.name} (block form {cfg.model.block_form}, {n_params / 1e6:.2f}M params) on "
        f"{cfg.data.name}: {sizes} images, {len(setup.classes)} classes",
        f"device {device}{threads}, {tc.precision}, {dist.world_size} process(es) x batch "
        f"{tc.batch_size} x {tc.accumulate_steps} accumulation = global batch {global_batch}, "
        f"lr {trainer.lr:g}{scaling}, {tc.epochs} epochs = {trainer.total_steps} steps{stop}; "
        f"run folder {setup.run_dir}",
    ]
    resume, p = setup.resume, trainer.progress
    if resume is not None:
        replay = ""
        if p.epoch_step and setup.train_fingerprint is not None:
            replay = (
                f"; the shard streams replay epoch {p.epoch + 1} up to batch "
                f"{p.epoch_step}, reading those samples without decoding them"
            )
        changed = f"; changed: {', '.join(resume.changed)}" if resume.changed else ""
        lines.append(
            f"resuming {resume.path} at epoch {p.epoch} + {p.epoch_step} batches "
            f"(step {p.step}){changed}{replay}"
        )
    return lines


def _silent(message: str) -> None:
    """Processes other than rank 0 print nothing."""
