"""Loading a state dict into a model with every key and every shape checked first."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from torch import nn

from ..errors import WeightsError


def key_differences(
    own: Mapping[str, torch.Tensor],
    state: Mapping[str, torch.Tensor],
    own_keys: set[str] | None = None,
) -> tuple[list[str], list[str], list[str]]:
    """Sorted missing keys (of ``own_keys``, default all of ``own``), unexpected keys, and
    ``"key: file (shape) vs model (shape)"`` lines of ``state`` against ``own``."""
    own_keys = set(own) if own_keys is None else own_keys
    missing = sorted(own_keys - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in sorted(own_keys & set(state))
        if tuple(state[k].shape) != tuple(own[k].shape)
    ]
    return missing, unexpected, shapes


def describe_differences(
    missing: list[str], unexpected: list[str], shapes: list[str], *, examples: int, eg: str = ""
) -> list[str]:
    """One phrase per kind of difference, with the first ``examples`` of each."""
    out = []
    if missing:
        out.append(f"{len(missing)} missing keys ({eg}{', '.join(missing[:examples])})")
    if unexpected:
        out.append(f"{len(unexpected)} unexpected keys ({eg}{', '.join(unexpected[:examples])})")
    if shapes:
        out.append(f"{len(shapes)} shape mismatches ({'; '.join(shapes[:examples])})")
    return out


def load_checked(
    model: nn.Module, state: Mapping[str, torch.Tensor], *, skip_classifier: bool = False
) -> None:
    """Copy ``state`` into ``model`` after checking every key and every shape.

    Unlike ``load_state_dict(strict=False)``, nothing is dropped silently: missing or
    unexpected keys and shape mismatches raise :class:`WeightsError` listing them.
    ``skip_classifier`` leaves ``fc`` as initialised (fine-tuning to new classes).
    """
    own = model.state_dict()
    state = dict(state)
    if skip_classifier:
        state = {k: v for k, v in state.items() if not k.startswith("fc.")}
        own_keys = {k for k in own if not k.startswith("fc.")}
    else:
        own_keys = set(own)
    missing, unexpected, shapes = key_differences(own, state, own_keys)
    problems = describe_differences(missing, unexpected, shapes, examples=3, eg="e.g. ")
    if problems:
        hint = ""
        if shapes and all(s.startswith("fc.") for s in shapes):
            hint = " Only the classifier differs: to fine-tune on new classes, skip the classifier."
        raise WeightsError(
            "the weights do not fit this model: " + "; ".join(problems) + ". Check that the model "
            "name (depth, cardinality, width) and num_classes match the file." + hint
        )
    model.load_state_dict(state, strict=not skip_classifier)


def built_to_load(build: Callable[[], nn.Module]) -> nn.Module:
    """``build()``'s module with its tensors allocated on the CPU but not initialised, for a
    full :func:`load_checked` to fill (skips the random initialisation: 0.16 s of the 0.17 s
    resnext50_32x4d takes to build). Only for modules whose every tensor is in their state
    dict (no non-persistent buffers), loaded without ``skip_classifier``."""
    with torch.device("meta"):
        model = build()
    return model.to_empty(device="cpu")
