"""Weight averaging: one model whose every tensor is the mean of several checkpoints'.

Checkpoints of one architecture, class list and preprocessing (e.g. the last epochs of one
run, or runs fine-tuned from one start) average into an inference-only checkpoint
(Wortsman et al. 2022, "model soups"; Izmailov et al. 2018, SWA). Every floating-point
tensor is averaged, BN running means and variances included. Those averaged statistics are
not the statistics of the averaged weights; for members far apart, re-estimate them on
training data before trusting the accuracy.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from ..data.preprocess import Preprocess
from ..errors import ConfigError, WeightsError
from .checked_load import load_checked
from .checkpoints import load_checkpoint, make_checkpoint, model_from_checkpoint, selected_ema
from .safe_read import extract_state_dict


def average_checkpoints(paths: Sequence[str | Path], *, ema: bool | None = None) -> dict[str, Any]:
    """The mean of the checkpoints' weights, as an inference-only checkpoint.

    Args:
        paths: two or more checkpoints (``resnext train``'s, or inference-only ones) of one
            architecture, class list and preprocessing; anything else is refused, naming the
            two files and the field that differs.
        ema: True/False = every file's EMA / trained weights; None = the weights each run
            selected and tested (``metrics.selected``).

    Floating-point tensors are summed in float64 and divided by their count, then cast back
    to the first file's dtype. Integer buffers (a ResNeXt's only ones are BN's
    ``num_batches_tracked``) take the largest value: a count, not a quantity to average,
    and BN reads it only with ``momentum=None``, which these models do not use. The result
    has no training state (optimizer to rng are None), the first file's config, and
    ``metrics`` ``{"selected": "model", "averaged_from": [the paths as given],
    "averaged_weights": ["ema" or "model" per file]}``.
    """
    names = [str(p) for p in paths]
    if len(names) < 2:
        raise ConfigError(
            f"averaging needs at least two checkpoints, got {len(names)}; "
            "give them all: resnext average A.pt B.pt [...] -o OUT.pt"
        )
    ckpts = [load_checkpoint(p) for p in names]
    for name, ckpt in zip(names[1:], ckpts[1:], strict=True):
        _check_same(names[0], ckpts[0], name, ckpt)

    states, taken = [], []
    for name, ckpt in zip(names, ckpts, strict=True):
        use_ema = selected_ema(ckpt) if ema is None else ema
        if use_ema and ckpt.get("ema") is None:
            raise WeightsError(
                f"{name!r} has no EMA weights (its run had train.ema_decay unset); "
                "average the trained weights with --no-ema"
            )
        states.append(extract_state_dict(ckpt["ema"] if use_ema else ckpt["model"]))
        taken.append("ema" if use_ema else "model")
    for name, state in zip(names[1:], states[1:], strict=True):
        _check_same_keys(names[0], states[0], name, state)

    averaged = {key: _mean([s[key] for s in states]) for key in states[0]}
    model = model_from_checkpoint(ckpts[0], use_ema=taken[0] == "ema")  # arch checked here
    load_checked(model, averaged)
    first = ckpts[0]
    return make_checkpoint(
        model,
        classes=list(first.get("classes") or []),
        preprocess=dict(first.get("preprocess") or {}),
        config=first.get("config"),
        metrics={"selected": "model", "averaged_from": names, "averaged_weights": taken},
    )


def _mean(tensors: list[torch.Tensor]) -> torch.Tensor:
    """float64 mean cast back (floating point); the largest value (integer buffers)."""
    first = tensors[0]
    if first.is_floating_point():
        total = torch.stack([t.to(torch.float64) for t in tensors]).sum(dim=0)
        return (total / len(tensors)).to(first.dtype)
    return torch.stack(tensors).amax(dim=0)


def _check_same(name_a: str, a: Mapping[str, Any], name_b: str, b: Mapping[str, Any]) -> None:
    """Refuse ``b`` unless its architecture, classes and preprocessing are ``a``'s."""
    why = "only checkpoints of one architecture, class list and preprocessing average"
    arch_a, arch_b = a.get("arch"), b.get("arch")
    if isinstance(arch_a, dict) and isinstance(arch_b, dict):
        for key in sorted(set(arch_a) | set(arch_b)):
            if arch_a.get(key) != arch_b.get(key):
                raise WeightsError(
                    f"{name_a} and {name_b} differ in arch.{key} "
                    f"({arch_a.get(key)!r} vs {arch_b.get(key)!r}): {why}"
                )
    elif arch_a != arch_b:
        raise WeightsError(
            f"{name_a} and {name_b} differ in arch ({arch_a!r} vs {arch_b!r}): {why}"
        )
    classes_a, classes_b = list(a.get("classes") or []), list(b.get("classes") or [])
    if classes_a != classes_b:
        if len(classes_a) != len(classes_b):
            what = f"{len(classes_a)} vs {len(classes_b)} classes"
        else:
            i = next(i for i, (x, y) in enumerate(zip(classes_a, classes_b, strict=True)) if x != y)
            what = f"class {i}: {classes_a[i]!r} vs {classes_b[i]!r}"
        raise WeightsError(f"{name_a} and {name_b} differ in classes ({what}): {why}")
    pre_a, pre_b = _preprocess(name_a, a), _preprocess(name_b, b)
    for key in sorted(set(pre_a) | set(pre_b)):
        if pre_a.get(key) != pre_b.get(key):
            raise WeightsError(
                f"{name_a} and {name_b} differ in preprocess.{key} "
                f"({pre_a.get(key)!r} vs {pre_b.get(key)!r}): {why}"
            )


def _preprocess(name: str, ckpt: Mapping[str, Any]) -> dict[str, Any]:
    """The preprocess record with today's defaults filled in ({} where a file has none)."""
    record = ckpt.get("preprocess")
    if record is None:
        return {}
    try:
        return Preprocess.from_dict(record).to_dict()
    except WeightsError as e:
        raise WeightsError(f"{name}: {e}") from e


def _check_same_keys(
    name_a: str, a: Mapping[str, torch.Tensor], name_b: str, b: Mapping[str, torch.Tensor]
) -> None:
    """One architecture has one key set and one shape per key; a file that breaks it is
    refused here, by name, rather than deep inside the sum."""
    only_a, only_b = sorted(set(a) - set(b)), sorted(set(b) - set(a))
    if only_a or only_b:
        raise WeightsError(
            f"{name_a} and {name_b} hold different weights (only in {name_a}: "
            f"{only_a[:3]}; only in {name_b}: {only_b[:3]})"
        )
    for key in a:
        if a[key].shape != b[key].shape:
            raise WeightsError(
                f"{name_a} and {name_b} differ in the shape of {key} "
                f"({tuple(a[key].shape)} vs {tuple(b[key].shape)})"
            )
