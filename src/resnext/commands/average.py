"""``resnext average``: one checkpoint whose weights are the mean of several checkpoints'.

Parses the arguments, calls :func:`resnext.checkpoint.average.average_checkpoints`, writes the
result with :func:`~resnext.checkpoint.save_checkpoint` and prints what it averaged.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..checkpoint import (
    model_from_checkpoint,
    refuse_overwriting,
    save_checkpoint,
    save_model_file,
)
from ..checkpoint.average import average_checkpoints
from ..errors import ConfigError
from ..models import Architecture
from .common import add_ema_options

HELP = "average the weights of checkpoints of one architecture (BN statistics included)"
USAGE = "resnext average CHECKPOINT CHECKPOINT [...] -o OUT [--ema | --no-ema]"
DESCRIPTION = """\
Average the weights of two or more checkpoints of one architecture, class list and preprocessing
(every floating-point tensor, BN running statistics included) into an inference-only checkpoint
that eval, predict and export read.
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoints", nargs="+", metavar="CHECKPOINT", help="two or more checkpoints")
    p.add_argument("-o", "--output", required=True, metavar="OUT", help="checkpoint to write")
    add_ema_options(p, "average")


def run(args: argparse.Namespace) -> int:
    out = Path(args.output)
    if out.is_dir():
        raise ConfigError(f"-o {args.output!r} is a folder; give the file to write, e.g. soup.pt")
    refuse_overwriting(out, args.checkpoints, "the average")
    payload = average_checkpoints(args.checkpoints, ema=args.ema)
    arch = payload["arch"]
    name = Architecture(**arch).name
    print(
        f"averaged {len(args.checkpoints)} checkpoints of {name} ({arch['num_classes']} classes), "
        "every floating-point tensor (BN running statistics included):"
    )
    for name, weights in zip(args.checkpoints, payload["metrics"]["averaged_weights"], strict=True):
        print(f"  {name} ({'EMA' if weights == 'ema' else 'trained'} weights)")
    try:
        if out.suffix == ".safetensors":  # a model file (safetensors + JSON), as convert writes
            model = model_from_checkpoint(payload)
            save_model_file(
                out,
                model,
                classes=payload["classes"],
                preprocess=payload["preprocess"],
                source={"format": "average", "files": payload["metrics"]["averaged_from"]},
            )
        else:
            save_checkpoint(out, payload)
    except OSError as e:
        raise ConfigError(f"cannot write {args.output!r}: {e.strerror or e}") from e
    print(f"wrote {out} (inference only: no optimizer state to resume)")
    return 0
