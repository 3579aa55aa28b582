"""What a resumed run may change, and the check that refuses everything else.

A resume must continue *the same run*: the same model, classes, data, schedule and model
selection. The keys below change where, how fast or how verbosely a run goes, or when it
stops; every other difference between the checkpoint's config and the new one is refused
before the first step, naming the key.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from ..config import Config, from_dict
from ..errors import ConfigError, WeightsError

#: Config keys that may differ on resume, each with the reason it is safe.
RESUME_MAY_CHANGE: dict[str, str] = {
    "data.root": "the dataset moved; the files and their order are the same",
    "data.num_workers": "batches are bitwise equal with 0 or N workers",
    "train.max_steps": "a stop after N steps of the recipe's schedule, not part of the schedule",
    "train.device": "where the run goes (numerics may differ in the last bits across devices)",
    "train.threads": "how fast the run goes",
    "train.compile": "how fast the run goes (compiled kernels may round differently)",
    "train.progress": "display only",
    "train.log_every": "logging only",
    "train.tensorboard": "logging only",
    "train.checkpoint_every_steps": "when last.pt is written, not what is trained",
    "train.output_dir": "where the run folder is",
    "train.run_name": "where the run folder is",
    "train.resume": "the resume itself",
    "model.pretrained": "only the first start reads it; a resume loads the checkpoint",
}

#: Why some keys users try to change are refused (every key not above is refused).
WHY_REFUSED: dict[str, str] = {
    "train.epochs": "the cosine schedule anneals over all epochs, so every later lr would change",
    "train.eval_every": "it decides which epochs are validated, so which can be selected",
    "data.on_bad_file": "it changes which images are trained on",
}
# train.epochs may change where the lr schedule does not depend on it.
_EPOCHS_MAY_CHANGE_UNDER = ("step", "multistep", "constant")


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
    if list(ckpt.get("classes", [])) != list(classes):
        raise WeightsError(
            f"{path} was trained on other classes ({len(ckpt.get('classes', []))} vs "
            f"{len(classes)} now); resume with the same dataset"
        )
    old = _flat(from_dict(ckpt.get("config") or {}).to_dict())  # old key names read as today's
    new = _flat(cfg.to_dict())
    changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    refused = [k for k in changed if k not in RESUME_MAY_CHANGE]
    if cfg.schedule.name in _EPOCHS_MAY_CHANGE_UNDER and "train.epochs" in refused:
        refused.remove("train.epochs")
    if refused:
        detail = "; ".join(
            f"{k}: {old.get(k)!r} (checkpoint) vs {new.get(k)!r} (now)"
            + (f", refused because {WHY_REFUSED[k]}" if k in WHY_REFUSED else "")
            for k in refused
        )
        raise ConfigError(
            f"{path} was trained with another config ({detail}). An exact resume needs the "
            "same recipe: use the run's config.yaml, or start a new run. Keys a resume may "
            f"change: {', '.join(RESUME_MAY_CHANGE)}, and train.epochs under a step, multistep "
            "or constant schedule"
        )
    return [k for k in changed if k != "train.resume"]
