"""Named model variants: ``create_model(name, **overrides)`` and ``list_models()``.

Besides the named entries, any ``resnext{depth}_{C}x{d}d`` (e.g. ``resnext50_8x14d``,
the paper's Table 2 sweep) and ``resnet{depth}`` name is parsed generally.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Sequence
from typing import Any

from .resnext import CIFAR_DEPTHS, CIFAR_WIDTHS, IMAGENET_DEPTHS, IMAGENET_WIDTHS, ResNeXt

# (depth, cardinality, bottleneck_width) of every named variant, in display order.
_NAMED: dict[str, tuple[int, int, int]] = {
    "resnet50": (50, 1, 64),
    "resnet101": (101, 1, 64),
    "resnet152": (152, 1, 64),
    "resnext50_32x4d": (50, 32, 4),
    "resnext50_64x4d": (50, 64, 4),
    "resnext101_32x4d": (101, 32, 4),
    "resnext101_32x8d": (101, 32, 8),
    "resnext101_64x4d": (101, 64, 4),
    "resnext152_32x4d": (152, 32, 4),
    "resnext29_8x64d": (29, 8, 64),
    "resnext29_16x64d": (29, 16, 64),
    # Paper Table 2: ResNeXt-50 at ~equal complexity, 1x64d .. 32x4d.
    "resnext50_2x40d": (50, 2, 40),
    "resnext50_4x24d": (50, 4, 24),
    "resnext50_8x14d": (50, 8, 14),
}

_RESNEXT = re.compile(r"^resnext(\d+)_(\d+)x(\d+)d$")
_RESNET = re.compile(r"^resnet(\d+)$")


def list_models() -> list[str]:
    """The named variants (any ``resnext{depth}_{C}x{d}d`` is accepted besides these)."""
    return list(_NAMED)


def parse_name(name: str) -> tuple[int, int, int]:
    """``(depth, cardinality, bottleneck_width)`` of a model name, or ValueError."""
    if name in _NAMED:
        return _NAMED[name]
    m = _RESNEXT.match(name)
    if m:
        return int(m[1]), int(m[2]), int(m[3])
    m = _RESNET.match(name)
    if m:
        depth = int(m[1])
        if depth in (18, 34):
            raise ValueError(
                f"{name} uses basic (two 3x3) blocks, which ResNeXt does not aggregate; "
                "this package builds bottleneck networks: use resnet50, resnet101 or resnet152"
            )
        return depth, 1, 64
    near = difflib.get_close_matches(name, _NAMED, n=3, cutoff=0.5)
    hint = f"did you mean {', '.join(near)}? " if near else ""
    raise ValueError(
        f"unknown model {name!r}; {hint}Known models: {', '.join(_NAMED)}; "
        "or any resnext{depth}_{C}x{d}d, e.g. resnext50_16x8d"
    )


def create_model(name: str, **overrides: Any) -> ResNeXt:
    """Build a registered or parsed variant; keyword overrides go to :class:`ResNeXt`.

    Example: ``create_model("resnext50_32x4d", num_classes=10, block_form="a")``.
    """
    depth, cardinality, width = parse_name(name)
    if depth in CIFAR_DEPTHS:
        family = "cifar"
        defaults: dict[str, Any] = {"num_classes": 10}
    elif depth in IMAGENET_DEPTHS:
        family = "imagenet"
        defaults = {}
    else:
        valid = sorted({*IMAGENET_DEPTHS, *CIFAR_DEPTHS})
        raise ValueError(
            f"model {name!r}: depth {depth} has no block table; valid depths: "
            f"{', '.join(map(str, valid))}"
        )
    for fixed in ("depth", "cardinality", "bottleneck_width", "family"):
        if fixed in overrides:
            raise ValueError(
                f"{fixed!r} is fixed by the model name {name!r}; choose another name instead"
            )
    kwargs = {**defaults, **overrides}
    return ResNeXt(
        depth=depth, cardinality=cardinality, bottleneck_width=width, family=family, **kwargs
    )


def default_input_size(name: str) -> int:
    """224 for the ImageNet family, 32 for the CIFAR family."""
    depth, _, _ = parse_name(name)
    return 32 if depth in CIFAR_DEPTHS else 224


def depth_from_blocks(family: str, blocks: Sequence[int]) -> int | None:
    """The depth of the ``family`` ("imagenet" or "cifar") whose stages hold ``blocks``
    blocks (``(3, 4, 6, 3)`` -> 50), or None where no depth has that block table."""
    if family not in ("imagenet", "cifar"):
        raise ValueError(f"family must be 'imagenet' or 'cifar', got {family!r}")
    table = IMAGENET_DEPTHS if family == "imagenet" else CIFAR_DEPTHS
    return next((d for d, t in table.items() if t == tuple(blocks)), None)


def arch_from_stages(family: str, blocks: Sequence[int], widths: Sequence[int]) -> dict[str, Any]:
    """``{"depth", "family", "widths"}`` of a network whose stages hold ``blocks`` blocks and
    end in ``widths`` channels, as an importer reads them off a file: the depth whose block
    table is ``blocks``, and ``widths`` None where they are the paper's (so the record says
    only what differs). ValueError naming the tables built where no depth has ``blocks``."""
    depth = depth_from_blocks(family, blocks)
    if depth is None:
        table = IMAGENET_DEPTHS if family == "imagenet" else CIFAR_DEPTHS
        known = ", ".join(f"{d}: {list(t)}" for d, t in table.items())
        raise ValueError(
            f"the stages hold {list(blocks)} blocks, which matches no depth this package "
            f"builds for the {family} family ({known})"
        )
    paper = IMAGENET_WIDTHS if family == "imagenet" else CIFAR_WIDTHS
    return {
        "depth": depth,
        "family": family,
        "widths": None if tuple(widths) == paper else tuple(widths),
    }
