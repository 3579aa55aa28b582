"""``resnext models``: the registry as a table of parameters and GFLOPs."""

from __future__ import annotations

import argparse

from ..models import create_model, default_input_size, list_models, measure
from ..table import format_table

HELP = "list the named models with params and GFLOPs"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--filter", default="", help="only names containing this text")


def run(args: argparse.Namespace) -> int:
    rows = [("name", "input", "params", "GFLOPs (MACs)")]
    for name in list_models():
        if args.filter not in name:
            continue
        size = default_input_size(name)
        # Meta-device construction would skip init, but measuring needs a real forward.
        c = measure(create_model(name), size)
        rows.append((name, f"{size}x{size}", f"{c.params / 1e6:.2f}M", f"{c.flops / 1e9:.2f}"))
    print(format_table(rows))
    print(
        "Any resnext{depth}_{C}x{d}d name is also accepted "
        "(depths 26, 50, 101, 152, 200; 29 for CIFAR)."
    )
    return 0
