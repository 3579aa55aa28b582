"""``resnext train [CONFIG] [key=value ...] [--resume] [--print-config]``: the main job.

With no arguments it trains the demo recipe (the :class:`~resnext.config.Config`
defaults) on the built-in digits dataset. Parses, calls :func:`resnext.training.train`,
prints the result table.
"""

from __future__ import annotations

import argparse
import signal
from pathlib import Path

from ..config import load_config
from ..configdoc import format_config, load_config_sources
from ..engine.preemption import exit_status
from ..engine.setup import resolve_run_config
from ..table import format_table
from ..training import TrainOutcome, train
from .common import IntermixedParser

HELP = "train a ResNeXt (no arguments: the built-in digits demo)"
DESCRIPTION = """\
Train a ResNeXt from a YAML recipe (configs/*.yaml) with key=value overrides. With no arguments:
the demo recipe on the built-in digits dataset. Exit status: 0 when the run ends (or
train.max_steps stops it); 128 + the signal's number when a stop signal (train.stop_signals,
default SIGTERM and SIGUSR1) stopped it after writing last.pt (143 for SIGTERM, 138 for
SIGUSR1), which --resume continues; 1 on an error. Restarted by torchrun (--max-restarts) or
a SLURM requeue, a run resumes its run folder by itself.
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.__class__ = IntermixedParser  # options and overrides in any order
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
    p.add_argument(
        "--print-config",
        action="store_true",
        help="print the fully resolved config, each key with its comment, and exit",
    )


def run(args: argparse.Namespace) -> int:
    config, overrides = args.config, list(args.overrides)
    if config is not None and "=" in config and not Path(config).is_file():
        overrides.insert(0, config)  # `resnext train train.epochs=3`: an override, no file
        config = None
    if args.resume:
        overrides.append("train.resume=auto")
    cfg = load_config(config, overrides)
    if args.print_config:
        sources = load_config_sources(config, overrides)
        cfg, _ = resolve_run_config(cfg, config_given=config is not None, overrides=overrides)
        print(format_config(cfg, sources), end="")
        return 0
    outcome = train(cfg, config_given=config is not None, overrides=overrides)
    if outcome.is_main:
        print(format_table(summary_rows(outcome), left=2))
        print("files: " + ", ".join(run_files(outcome.run_dir)))
    stopped_by = outcome.result.stopped_by  # every process exits alike
    return exit_status(signal.Signals[stopped_by]) if stopped_by else 0


def summary_rows(outcome: TrainOutcome) -> list[tuple[str, str]]:
    """The result table: selection, test accuracy, progress, time, run folder."""
    r = outcome.result
    rows: list[tuple[str, str]] = [("result", "value")]
    if r.best_val_top1 is not None:
        rows.append(("best val top-1", f"{r.best_val_top1:.2f}% (epoch {r.best_epoch})"))
        last = next((h for h in reversed(r.history) if "val_top1_ema" in h), None)
        if last is not None:  # both weights, so a gap between the EMA and the model shows
            rows.append(
                (
                    f"last val top-1 (epoch {last['epoch']}): trained / EMA",
                    f"{last['val_top1_model']:.2f}% / {last['val_top1_ema']:.2f}%",
                )
            )
    elif r.best_epoch is not None:
        rows.append(("model selection", f"last epoch ({r.best_epoch}): no val split"))
    else:
        rows.append(("model selection", "none: no epoch finished"))
    if r.test is None and r.stopped_by:
        rows.append(("test", f"not run: stopped by {r.stopped_by}"))
    if r.test is not None:
        weights = "EMA weights" if r.selected == "ema" else "trained weights"
        rows += [
            (f"test top-1 ({r.tested}, {weights}, fp32)", f"{r.test['top1']:.2f}%"),
            ("test top-5", f"{r.test['top5']:.2f}%"),
            ("test images", str(r.test["images"])),
        ]
    if r.stopped_by:
        why = f"stopped by {r.stopped_by}; --resume continues it"
    else:
        why = f"stopped by train.max_steps={outcome.config.train.max_steps}"
    if r.epoch_step:
        progress = (
            f"{r.steps} steps: {r.epochs} epochs + {r.epoch_step}/{r.batches_per_epoch} batches "
            f"of epoch {r.epochs + 1} ({why})"
        )
        rows.append(("steps", progress))
    else:
        rows.append(
            ("steps / epochs", f"{r.steps} / {r.epochs}" + (f" ({why})" * bool(r.stopped_by)))
        )
    rows += [
        ("time (this session)", _duration(outcome.seconds)),
        ("run folder", str(outcome.run_dir)),
    ]
    return rows


def run_files(run_dir: Path) -> list[str]:
    """The files the run folder holds, each with what it is."""
    named = {
        "best.pt": "selected on val",
        "last.pt": "to resume",
        "metrics.jsonl": "",
        "curves.png": "",
        "config.yaml": "",
        "tensorboard": "tensorboard --logdir",
    }
    return [
        f"{run_dir / name}" + (f" ({what})" if what else "")
        for name, what in named.items()
        if (run_dir / name).exists()
    ]


def _duration(seconds: float) -> str:
    m, s = divmod(round(seconds), 60)
    return f"{m}m {s:02d}s" if m else f"{seconds:.1f}s"
