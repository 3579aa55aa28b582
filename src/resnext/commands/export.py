"""``resnext export``: a checkpoint as ONNX, TorchScript or a safetensors model file.

Parses the arguments, calls the format's :meth:`resnext.export.Target.export` (which checks the
file against the eager model before keeping it) and prints what was written.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..checkpoint import (
    is_model_file,
    load_checkpoint,
    model_from_checkpoint,
    refuse_overwriting,
    selected_ema,
)
from ..data.class_names import default_class_names
from ..data.preprocess import Preprocess
from ..errors import WeightsError
from ..export import FORMATS, SUFFIXES, TARGETS, check_output_path
from .common import add_ema_options

HELP = "write a checkpoint as ONNX, TorchScript or safetensors, checked against eager"
DESCRIPTION = """\
Export a checkpoint (or model file) for deployment. The file carries or sits beside
(NAME.onnx.json, NAME.pt.json) its class names and preprocessing, and is read back by its
runtime and compared with the eager model before it is kept.
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    endings = "; ".join(f"{f}: {' or '.join(s)}" for f, s in SUFFIXES.items())
    p.add_argument(
        "checkpoint", metavar="CHECKPOINT", help="a `resnext train` checkpoint or model file"
    )
    p.add_argument("--format", required=True, choices=FORMATS, help="what to write")
    p.add_argument(
        "-o", "--output", required=True, metavar="OUT", help=f"file to write ({endings})"
    )
    add_ema_options(p, "export")
    p.add_argument(
        "--opset", type=int, metavar="N", help="ONNX opset (default: the exporter's, 20)"
    )


def run(args: argparse.Namespace) -> int:
    out = check_output_path(args.output, args.format)  # refuse a bad path before loading
    refuse_overwriting(out, [args.checkpoint], "the export")
    ckpt = load_checkpoint(args.checkpoint)
    use_ema = selected_ema(ckpt) if args.ema is None else args.ema
    model = model_from_checkpoint(ckpt, use_ema=use_ema)
    arch = model.arch
    classes = ckpt.get("classes") or default_class_names(arch.num_classes)
    if ckpt.get("preprocess") is None:
        raise WeightsError(
            f"{args.checkpoint!r} stores no preprocess entry, so the exported file could not "
            "say how to prepare images"
        )
    pre = Preprocess.from_dict(ckpt["preprocess"])
    source = {
        "format": "resnext-model" if is_model_file(args.checkpoint) else "resnext-checkpoint",
        "file": Path(args.checkpoint).name,
        "weights": "ema" if use_ema else "model",
    }
    if ckpt.get("source"):
        source["origin"] = ckpt["source"]
    report = TARGETS[args.format].export(
        model, out, classes=classes, preprocess=pre, source=source, opset=args.opset
    )
    shown = ", ".join(json.dumps(c) for c in classes[:3]) + (", ..." if len(classes) > 3 else "")
    print(
        f"{arch.name} ({'EMA' if use_ema else 'trained'} weights, block form "
        f"{arch.block_form}), {len(classes)} classes ({shown})"
    )
    print(f"preprocessing: {pre.describe()}, mean {list(pre.mean)}, std {list(pre.std)}")
    opset = f", opset {report.opset}" if report.opset is not None else ""
    print(f"wrote {report.path} ({_size(report.size_bytes)}, {report.exporter}{opset})")
    print(f"wrote {report.sidecar} (architecture, classes, preprocessing)")
    print(report.check_line())
    for note in report.notes:
        print(f"note: {note}")
    return 0


def _size(n: int) -> str:
    if n >= 1e6:
        return f"{n / 1e6:.1f} MB"
    return f"{n / 1e3:.1f} kB" if n >= 1e3 else f"{n} bytes"
