"""``resnext complexity NAME``: params, multiply-adds and activations, per stage."""

from __future__ import annotations

import argparse

from ..errors import ConfigError
from ..models import create_model, default_input_size, measure
from ..table import format_table

HELP = "params, FLOPs (multiply-adds) and activations of a model"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", help="model name, e.g. resnext50_32x4d")
    p.add_argument(
        "--input-size",
        type=int,
        default=None,
        help="square input side (default: 224, or 32 for CIFAR models)",
    )
    p.add_argument("--num-classes", type=int, default=None, help="classifier outputs")
    p.add_argument(
        "--block-form",
        choices=("a", "b", "c"),
        default="c",
        help="paper Fig. 3 form (same counts for all three)",
    )


def run(args: argparse.Namespace) -> int:
    try:
        overrides = {"block_form": args.block_form}
        if args.num_classes is not None:
            overrides["num_classes"] = args.num_classes
        model = create_model(args.name, **overrides)
        size = args.input_size or default_input_size(args.name)
        c = measure(model, size)
    except ValueError as e:
        raise ConfigError(str(e)) from e
    print(f"{args.name} at {size}x{size} (block form {args.block_form})")
    print(format_table(c.rows(), left=2, rule_before_last=True))
    print(f"params: {c.params / 1e6:.2f}M ({c.params:,})")
    print(f"FLOPs (multiply-adds): {c.flops / 1e9:.2f} G")
    print(f"activations: {c.activations / 1e6:.2f} M")
    return 0
