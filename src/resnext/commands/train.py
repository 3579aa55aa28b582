"""``resnext train [CONFIG] [key=value ...] [--resume]``: the main job.

With no arguments it trains the demo recipe (the :class:`~resnext.config.Config`
defaults, spelled out in ``configs/demo.yaml``) on the built-in digits dataset. This
module is the one place that wires config -> data -> model -> engine; every check a
user can fail (config, output folder, data, weights, resume checkpoint) runs before
the first training step.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch

from ..cli import UserError
from ..config import Config, from_dict, load_config, merge_overrides
from ..data import build_splits
from ..engine import (
    DistInfo,
    NonFiniteLossError,
    Trainer,
    amp_dtype,
    cleanup,
    configure_torch,
    init_distributed,
    load_checkpoint,
    resolve_device,
    seed_everything,
)
from ..models import create_model
from ..table import format_table
from ..weights import extract_state_dict, load_checked, read_file

# Config keys that may differ between a checkpoint and the run that resumes it: they
# change where and how fast a run goes, not what it computes. Any other difference is
# refused, because the resumed run would silently stop being the run it continues.
RESUME_MAY_CHANGE = {
    "data.root",
    "data.num_workers",
    "data.on_bad_file",
    "train.epochs",
    "train.max_steps",
    "train.device",
    "train.threads",
    "train.progress",
    "train.output_dir",
    "train.run_name",
    "train.resume",
    "train.eval_every",
    "train.log_every",
    "train.checkpoint_every_steps",
    "train.compile",
    "model.pretrained",
}


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train a ResNeXt (no arguments: the built-in digits demo)",
        description=(
            "Train a ResNeXt from a YAML recipe (configs/*.yaml) with key=value overrides. "
            "With no arguments: the demo recipe on the built-in digits dataset."
        ),
    )
    p.add_argument(
        "config",
        nargs="?",
        default=None,
        help="YAML recipe, e.g. configs/cifar10_resnext29_8x64d.yaml (default: the demo)",
    )
    p.add_argument("overrides", nargs="*", help="section.key=value overrides, e.g. train.epochs=5")
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue the run's last checkpoint (same as train.resume=auto)",
    )
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    config, overrides = args.config, list(args.overrides)
    if config is not None and "=" in config and not Path(config).is_file():
        overrides.insert(0, config)  # `resnext train train.epochs=3`: an override, no file
        config = None
    if args.resume:
        overrides.append("train.resume=auto")
    cfg = load_config(config, overrides)
    return train(cfg, config_given=config is not None, overrides=overrides)


# -- run folder and resume target -------------------------------------------------------
def _find_resume(cfg: Config) -> Path:
    """The checkpoint ``train.resume`` names: a path, or ``auto`` (the run's last.pt)."""
    tc = cfg.train
    out = Path(tc.output_dir)
    if tc.resume != "auto":
        path = Path(tc.resume)  # type: ignore[arg-type]
        if not path.is_file():
            raise UserError(f"train.resume={tc.resume!r}: no such checkpoint file")
        return path
    if tc.run_name is not None:
        path = out / tc.run_name / "last.pt"
        if not path.is_file():
            raise UserError(
                f"nothing to resume: {path} does not exist (train.run_name={tc.run_name!r}); "
                "drop --resume to start the run"
            )
        return path
    found = sorted(out.glob("*/last.pt"), key=lambda p: p.stat().st_mtime)
    if not found:
        raise UserError(
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
        raise UserError(
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
        raise UserError(
            f"cannot create the run folder {run_dir}: {probe} is a file, not a folder; "
            "set train.output_dir to a writable folder"
        )
    if not os.access(probe, os.W_OK | os.X_OK):
        raise UserError(
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
        raise UserError(
            f"cannot write to the run folder {run_dir} ({e.strerror or e}); "
            "set train.output_dir to a writable folder"
        ) from e


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def check_resume_compatible(
    ckpt: dict[str, Any], cfg: Config, model: torch.nn.Module, classes: list[str], path: Path
) -> list[str]:
    """Refuse a checkpoint of another model, dataset or recipe; list allowed changes."""
    arch = ckpt.get("arch")
    own = model.arch.to_dict()  # type: ignore[union-attr]
    if arch != own:
        diff = sorted(k for k in own if arch is None or arch.get(k) != own[k])
        detail = ", ".join(
            f"{k}: {None if arch is None else arch.get(k)!r} (checkpoint) vs {own[k]!r} (now)"
            for k in diff
        )
        raise UserError(
            f"{path} holds another model ({detail}); resume it with the config it was trained "
            "with, or start a new run (drop --resume / train.resume)"
        )
    if list(ckpt.get("classes", [])) != list(classes):
        raise UserError(
            f"{path} was trained on other classes ({len(ckpt.get('classes', []))} vs "
            f"{len(classes)} now); resume with the same dataset"
        )
    old, new = _flat(ckpt.get("config", {})), _flat(cfg.to_dict())
    changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    refused = [k for k in changed if k not in RESUME_MAY_CHANGE]
    if refused:
        detail = "; ".join(
            f"{k}: {old.get(k)!r} (checkpoint) vs {new.get(k)!r} (now)" for k in refused
        )
        raise UserError(
            f"{path} was trained with another config ({detail}). An exact resume needs the "
            f"same recipe: use the run's config.yaml, or start a new run"
        )
    return [k for k in changed if k != "train.resume"]


# -- the job ------------------------------------------------------------------------------
def train(cfg: Config, *, config_given: bool = True, overrides: list[str] | None = None) -> int:
    """Check everything, build data and model, hand them to the engine, print the results."""
    t_start = time.perf_counter()
    device = resolve_device(cfg.train.device)
    dist = init_distributed(device)
    try:
        return _train(cfg, device, dist, config_given, overrides or [], t_start)
    finally:
        cleanup(dist)


def _train(
    cfg: Config,
    device: torch.device,
    dist: DistInfo,
    config_given: bool,
    overrides: list[str],
    t_start: float,
) -> int:
    say = print if dist.is_main else (lambda *a, **k: None)
    resume = _find_resume(cfg) if cfg.train.resume else None
    ckpt = None
    if resume is not None:
        ckpt = load_checkpoint(resume)
        if not config_given:
            # `resnext train --resume` alone continues the run with its own recipe.
            base = ckpt.get("config") or {}
            cfg = from_dict(merge_overrides(base, [*overrides, f"train.resume={resume}"]))
    amp_dtype(cfg.train.amp, device)  # fp16 on CPU: refuse now
    configure_torch(cfg.train.deterministic, cfg.train.threads)
    run_dir = _run_dir(cfg, resume, dist)
    if dist.is_main:
        _check_writable(run_dir, create=False)

    if cfg.data.root is not None and not Path(cfg.data.root).exists():
        raise UserError(
            f"data.root={cfg.data.root!r} does not exist; point it at the {cfg.data.name} "
            "dataset on disk (see configs/ for each recipe's expected layout)"
        )
    try:
        splits = build_splits(cfg.data)
    except (OSError, ValueError) as e:
        raise UserError(f"cannot read the {cfg.data.name} dataset: {e}") from e
    classes = list(splits.classes)
    if cfg.model.num_classes is not None and cfg.model.num_classes != len(classes):
        raise UserError(
            f"model.num_classes={cfg.model.num_classes} but the {cfg.data.name} dataset has "
            f"{len(classes)} classes; leave model.num_classes unset (null) to use the dataset's"
        )

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
        raise UserError(f"model: {e}") from e
    if cfg.model.pretrained is not None and ckpt is None:
        state = extract_state_dict(read_file(cfg.model.pretrained))
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
    preprocess = {
        "image_size": cfg.data.image_size,
        "eval_resize": cfg.data.eval_resize,
        "interpolation": cfg.data.interpolation,
        "mean": [float(v) for v in splits.mean],
        "std": [float(v) for v in splits.std],
    }
    trainer = Trainer(
        model,
        splits.train,
        splits.val,
        splits.test,
        cfg,
        run_dir,
        classes=classes,
        preprocess=preprocess,
        device=device,
        dist=dist,
    )
    if ckpt is not None:
        try:
            trainer.load_state(ckpt, resume)
        except (KeyError, ValueError, RuntimeError) as e:
            raise UserError(f"cannot resume from {resume}: {e}") from e
    if dist.is_main:
        (run_dir / "config.yaml").write_text(cfg.to_yaml())

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
    say(
        f"device {device}{threads}, {dist.world_size} process(es) x batch {cfg.train.batch_size}"
        f" x {cfg.train.accumulate_steps} accumulation, lr {trainer.lr:g}, "
        f"{cfg.train.epochs} epochs = {trainer.total_steps} steps; run folder {run_dir}"
    )
    if ckpt is not None:
        say(
            f"resuming {resume} at epoch {trainer.epoch} + {trainer.epoch_step} batches "
            f"(step {trainer.step})" + (f"; changed: {', '.join(changed)}" if changed else "")
        )
    sys.stdout.flush()

    try:
        result = trainer.fit()
    except NonFiniteLossError as e:
        print(f"resnext train: error: {e}", file=sys.stderr)
        return 1

    if dist.is_main:
        rows: list[tuple[str, str]] = [("result", "value")]
        if result.best_val_top1 is not None:
            rows.append(
                ("best val top-1", f"{result.best_val_top1:.2f}% (epoch {result.best_epoch})")
            )
        else:
            rows.append(("model selection", f"last epoch ({result.best_epoch}): no val split"))
        if result.test is not None:
            weights = "EMA weights" if result.selected == "ema" else "weights"
            rows += [
                (f"test top-1 (best.pt, {weights})", f"{result.test['top1']:.2f}%"),
                ("test top-5", f"{result.test['top5']:.2f}%"),
                ("test images", str(result.test["images"])),
            ]
        elapsed = time.perf_counter() - t_start
        rows += [
            ("steps / epochs", f"{result.steps} / {result.epochs}"),
            ("time (this session)", _duration(elapsed)),
            ("run folder", str(run_dir)),
        ]
        print(format_table(rows, left=2))
        print(
            f"files: {run_dir / 'best.pt'} (selected on val), {run_dir / 'last.pt'}, "
            f"{run_dir / 'metrics.jsonl'}, {run_dir / 'curves.png'}, {run_dir / 'config.yaml'}"
        )
    return 0


def _duration(seconds: float) -> str:
    m, s = divmod(round(seconds), 60)
    return f"{m}m {s:02d}s" if m else f"{seconds:.1f}s"
