"""What a resumed run may change, and the check that refuses everything else.

A resume must continue *the same run*: the same model, classes, data, schedule and model
selection. The keys below change where, how fast or how verbosely a run goes, or when it
stops; every other difference between the checkpoint's config and the new one is refused
before the first step, naming the key.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import nn

from ..config import ADDED, Config, from_stored
from ..errors import ConfigError, WeightsError

#: Config keys that may differ on resume, each with the reason it is safe.
RESUME_MAY_CHANGE: dict[str, str] = {
    "data.root": "the dataset moved; the files and their order are the same",
    "data.split_file": (
        "it names the run's recorded split (splits.json) where the run folder lost its copy; "
        "the record is checked against the run folder's own, its files against those on disk, "
        "and the train split's size against the checkpoint's"
    ),
    "train.max_steps": "a stop after N steps of the recipe's schedule, not part of the schedule",
    "train.device": "where the run goes (numerics may differ in the last bits across devices)",
    "train.threads": "how fast the run goes",
    "train.compile": "how fast the run goes (compiled kernels may round differently)",
    "train.progress": "display only",
    "train.log_every": "logging only",
    "train.tensorboard": "logging only",
    "train.checkpoint_every_steps": "when last.pt is written, not what is trained",
    "train.stop_signals": "which signals stop the run, not what is trained",
    "train.keep_checkpoints": "how many checkpoints are kept, not what is trained",
    "train.dist_timeout_s": "how long a collective waits for a hung peer before failing",
    "train.output_dir": "where the run folder is",
    "train.run_name": "where the run folder is",
    "train.resume": "the resume itself",
    "model.pretrained": "only the first start reads it; a resume loads the checkpoint",
}


def _epochs_may_change(old: Config, cfg: Config) -> str | None:
    """None where train.epochs may change on resume (``old``: the checkpoint's config,
    ``cfg``: the new one), else why not."""
    if cfg.schedule.name == "cosine":
        return "the cosine schedule anneals over all epochs, so every later lr would change"
    if cfg.train.eval_every != 1:
        return (
            "with train.eval_every > 1 the epochs that are validated (the last one always is) "
            "would change, and so which can be selected"
        )
    return None


def _workers_may_change(old: Config, cfg: Config) -> str | None:
    """None where data.num_workers may change on resume, else why not."""
    # A shard stream has max(1, num_workers) streams per process: 0 and 1 read alike.
    if cfg.data.name == "webdataset" and max(1, old.data.num_workers) != max(
        1, cfg.data.num_workers
    ):
        return (
            "each loader stream of a shard split (max(1, data.num_workers) per process) reads "
            "its own shards, so the number of streams decides the order of the samples"
        )
    return None


#: Keys that may change on resume only under a condition: key -> (its test of the
#: checkpoint's and the new config, its reason).
RESUME_MAY_CHANGE_IF: dict[str, tuple[Callable[[Config, Config], str | None], str]] = {
    "data.num_workers": (
        _workers_may_change,
        "with the map-style readers batches are bitwise equal with 0 or N workers; with shards "
        "0 and 1 worker read as one stream",
    ),
    "train.epochs": (
        _epochs_may_change,
        "under a step, multistep or constant schedule validated every epoch, the lr and the "
        "selection of every epoch do not depend on the number of epochs",
    ),
}

#: Why some keys users try to change are refused (every key not above is refused).
WHY_REFUSED: dict[str, str] = {
    "train.eval_every": "it decides which epochs are validated, so which can be selected",
    "data.on_bad_file": "it changes which images are trained on",
}

#: What a checkpoint must hold to be resumed (an inference-only checkpoint holds None there).
_TRAINING_STATE = ("optimizer", "scheduler", "epoch", "epoch_step", "step", "rng")


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def check_resume_compatible(
    ckpt: dict[str, Any], cfg: Config, model: nn.Module, classes: list[str], path: Path
) -> list[str]:
    """Refuse a checkpoint of another model, dataset or recipe; list the allowed changes."""
    arch = ckpt.get("arch")
    own = model.arch.to_dict()  # type: ignore[union-attr]
    if arch != own:
        diff = sorted(k for k in own if arch is None or arch.get(k) != own[k])
        detail = ", ".join(
            f"{k}: {None if arch is None else arch.get(k)!r} (checkpoint) vs {own[k]!r} (now)"
            for k in diff
        )
        raise WeightsError(
            f"{path} holds another model ({detail}); resume it with the config it was trained "
            "with, or start a new run (drop --resume / train.resume)"
        )
    missing = [k for k in _TRAINING_STATE if ckpt.get(k) is None]
    if missing:
        raise WeightsError(
            f"{path} holds no training state ({', '.join(missing)} missing): it is a model for "
            "inference, not a run to resume; start a new run from it with model.pretrained="
        )
    if list(ckpt.get("classes", [])) != list(classes):
        raise WeightsError(
            f"{path} was trained on other classes ({len(ckpt.get('classes', []))} vs "
            f"{len(classes)} now); resume with the same dataset"
        )
    old_cfg = from_stored(ckpt.get("config"))  # read as today's keys
    old = _flat(old_cfg.to_dict())
    new = _flat(cfg.to_dict())
    changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    why = dict(WHY_REFUSED)
    stored = ckpt.get("config") or {}
    for key, value in ADDED.items():  # the run's own config.yaml predates the key too
        section, name = key.split(".")
        if name not in (stored.get(section) or {}):
            why[key] = (
                f"this run was written before {key} existed and trained as {key}={value}; "
                f"add {key}={value} to resume it"
            )
    for key, (test, _) in RESUME_MAY_CHANGE_IF.items():
        reason = test(old_cfg, cfg)
        if reason is not None:
            why[key] = reason
    refused = [
        k
        for k in changed
        if k not in RESUME_MAY_CHANGE and (k not in RESUME_MAY_CHANGE_IF or k in why)
    ]
    if refused:
        detail = "; ".join(
            f"{k}: {old.get(k)!r} (checkpoint) vs {new.get(k)!r} (now)"
            + (f", refused because {why[k]}" if k in why else "")
            for k in refused
        )
        raise ConfigError(
            f"{path} was trained with another config ({detail}). An exact resume needs the "
            "same recipe: use the run's config.yaml, or start a new run. Keys a resume may "
            f"change: {', '.join(RESUME_MAY_CHANGE)}; and, where the recipe allows it, "
            f"{', '.join(RESUME_MAY_CHANGE_IF)}"
        )
    return [k for k in changed if k != "train.resume"]
