"""``resnext eval``: accuracy of checkpoints (or an ensemble of them) on a dataset split.

Parses the arguments into :class:`resnext.inference.EvalOptions`, calls
:func:`resnext.inference.prepare_evaluation` (what ``resnext.evaluate`` runs) and prints
the report.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..config import parse_override
from ..errors import ConfigError
from ..inference import EvalOptions, prepare_evaluation
from ..inference.classes import readable_names
from ..inference.report import (
    MAX_CONFUSION_CLASSES,
    draw_confusion,
    per_class_table,
    results_table,
    write_json,
)
from .common import IntermixedParser, add_model_options, runtime_from_args

_OVERRIDE = re.compile(r"^[A-Za-z_]+\.[A-Za-z_]+=")


HELP = "top-1/top-5 accuracy of checkpoints or an ensemble (centre, 10-crop, large crop)"
DESCRIPTION = """\
Evaluate one checkpoint, or several as a softmax-averaged ensemble. By default the data is the
checkpoint's own dataset and its test split; data.key=value overrides change it (as for train).
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.__class__ = IntermixedParser  # options and positionals in any order
    p.add_argument(
        "inputs",
        nargs="*",
        metavar="CHECKPOINT|data.key=value",
        help="checkpoints from `resnext train` (several = an ensemble), and data overrides",
    )
    add_model_options(p)
    p.add_argument("--split", choices=("test", "val"), default="test", help="split to evaluate")
    p.add_argument("--data-name", help="dataset reader (same as data.name=...)")
    p.add_argument("--data-root", help="dataset location (same as data.root=...)")
    p.add_argument(
        "--ten-crop", action="store_true", help="10-crop test: 4 corners + centre, and flips"
    )
    p.add_argument("--crop", type=int, help="test crop side (default: the checkpoint's)")
    p.add_argument(
        "--resize",
        type=int,
        help="shorter side before cropping (default: scaled with --crop by the checkpoint's ratio)",
    )
    p.add_argument("--batch-size", type=int, default=128, help="images per batch")
    p.add_argument("--workers", type=int, help="DataLoader workers (default: data.num_workers)")
    p.add_argument("--json", metavar="PATH", help="write every number to this JSON file")
    p.add_argument(
        "--confusion", metavar="PNG", help="draw the confusion matrix (up to 100 classes)"
    )
    p.add_argument(
        "--explain",
        metavar="DIR",
        help="write a gallery (DIR/index.html) of class activation maps: the most confident "
        "mistakes and least confident right answers, each with its true and predicted class's map",
    )
    p.add_argument(
        "--explain-count",
        type=int,
        default=8,
        metavar="N",
        help="images in each half of the --explain gallery (default 8)",
    )


def split_inputs(items: Sequence[str]) -> tuple[list[str], dict[str, Any]]:
    """Separate checkpoint paths from ``data.key=value`` overrides (as a dict of data keys)."""
    paths: list[str] = []
    data: dict[str, Any] = {}
    for item in items:
        if _OVERRIDE.match(item) and not Path(item).exists():
            (section, key), value = parse_override(item)
            if section != "data":
                raise ConfigError(
                    f"override {item!r}: eval takes only data.* overrides (the model comes from "
                    "the checkpoint), e.g. data.root=/path/to/data"
                )
            data[key] = value
        else:
            paths.append(item)
    return paths, data


def run(args: argparse.Namespace) -> int:
    paths, data = split_inputs(args.inputs)
    if args.data_name:
        data["name"] = args.data_name
    if args.data_root:
        data["root"] = args.data_root
    options = EvalOptions(
        paths,
        model=args.model,
        weights=args.weights,
        data=data,
        split=args.split,
        ten_crop=args.ten_crop,
        crop=args.crop,
        resize=args.resize,
        ema=args.ema,
        runtime=runtime_from_args(args),
        batch_size=args.batch_size,
        workers=args.workers,
        explain=args.explain,
        explain_count=args.explain_count,
    )
    evaluation = prepare_evaluation(options)
    if args.confusion and len(evaluation.classes) > MAX_CONFUSION_CLASSES:
        raise ConfigError(
            f"--confusion draws at most {MAX_CONFUSION_CLASSES} classes and this dataset has "
            f"{len(evaluation.classes)}; drop --confusion (--json PATH holds per-class accuracy)"
        )
    for note in evaluation.notes:
        print(f"note: {note}", file=sys.stderr)
    print("\n".join(evaluation.describe()))
    report = evaluation.run(progress=not args.no_progress)
    print(results_table(report))
    names = readable_names(evaluation.classes)  # WordNet-id folders shown as their names
    print(per_class_table(report, names))
    if args.json:
        write_json(args.json, report)
        print(f"wrote {args.json}")
    if args.confusion:
        draw_confusion(args.confusion, report.final, names)
        print(f"wrote {args.confusion}")
    if "gallery" in report.info:
        print(f"wrote {report.info['gallery']} (class activation maps)")
    return 0
