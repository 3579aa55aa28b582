"""``resnext quantize``: an int8 ONNX model, calibrated on real images and kept only if an
accuracy gate passes (:mod:`resnext.inference.int8`)."""

from __future__ import annotations

import argparse

from ..export.to_int8 import METHODS
from ..inference.int8 import Gate, Quantization, QuantizeOptions
from ..table import format_table
from .common import add_ema_options

HELP = "write an int8 ONNX model, calibrated on real images and accuracy-checked"
USAGE = "resnext quantize MODEL -o OUT.onnx [--calibration DIR|YAML] [--max-drop PT] [...]"
DESCRIPTION = """\
Quantize a checkpoint, model file or state dict (with --model) to int8 ONNX with
onnxruntime's static quantizer: per-channel int8 weights, activation ranges calibrated on
images that pass through the model's own eval preprocessing (by default its training split).
Then evaluate fp32 and int8 on labelled images (by default the validation split; without
labels, agreement with fp32 on images held out from calibration) and refuse to write a model
whose top-1 drop exceeds --max-drop. The file carries its classes, preprocessing, settings,
calibration and the gate's figures in its metadata and in OUT.onnx.json, and runs wherever
an exported .onnx does (predict, eval, serve, Classifier).
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "checkpoint",
        metavar="MODEL",
        help="a `resnext train` checkpoint, a model file, or a state dict with --model",
    )
    p.add_argument("-o", "--output", required=True, metavar="OUT", help="the .onnx to write")
    p.add_argument("--model", metavar="NAME", help="registry name when MODEL is a state dict")
    p.add_argument(
        "--calibration",
        metavar="DIR|YAML",
        help="calibration images: a folder, or a data config (default: the checkpoint's own "
        "training split)",
    )
    p.add_argument(
        "--images", type=int, default=300, metavar="N", help="calibration images (default 300)"
    )
    p.add_argument(
        "--method", choices=METHODS, default="minmax", help="calibration method (default minmax)"
    )
    p.add_argument(
        "--eval-data",
        metavar="DIR|YAML",
        help="gate images: a folder (labelled where its sub-folders are class names) or a data "
        "config (default: the checkpoint's validation split)",
    )
    p.add_argument(
        "--eval-split",
        choices=("val", "test"),
        default="val",
        help="which split of the dataset the gate uses (default val)",
    )
    p.add_argument(
        "--eval-images", type=int, metavar="N", help="at most N gate images (default: all)"
    )
    p.add_argument(
        "--max-drop",
        type=float,
        default=1.0,
        metavar="PT",
        help="refuse past this many top-1 points lost (default 1.0)",
    )
    p.add_argument(
        "--force", action="store_true", help="write even past --max-drop (figures in metadata)"
    )
    add_ema_options(p, "quantize")


def run(args: argparse.Namespace) -> int:
    options = QuantizeOptions(
        args.checkpoint,
        args.output,
        arch=args.model,
        calibration=args.calibration,
        images=args.images,
        method=args.method,
        eval_data=args.eval_data,
        eval_images=args.eval_images,
        eval_split=args.eval_split,
        max_drop=args.max_drop,
        force=args.force,
        ema=args.ema,
    )
    with Quantization(options) as q:
        print(f"{q.model.arch.name}, {len(q.classes)} classes; {q.settings.describe()}")
        print(f"settings: {q.why}")
        print(f"calibration: {len(q.calibration.indices)} images of the {q.calibration.what}")
        gate = q.gate()
        print(
            f"quantized in {q.quantize_seconds:.1f} s; gate on {gate.count} images of "
            f"the {gate.images}:"
        )
        print(format_table(gate_table(gate)))
        print(verdict(gate))
        path, side = q.write()
        if not gate.passed:
            print(
                f"warning: --force: written although the drop {gate.drop_pt:.2f} pt exceeds "
                f"--max-drop {gate.max_drop:g} pt (recorded in its metadata)"
            )
        print(f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB)")
        print(f"wrote {side} (architecture, classes, preprocessing, int8 settings and gate)")
    return 0


def gate_table(gate: Gate) -> list[tuple[str, ...]]:
    """Header and the fp32 and int8 rows: top-1, top-k, agreement (percent)."""

    def pct(v: float | None) -> str:
        return "-" if v is None else f"{v:.2f}"

    rows: list[tuple[str, ...]] = [("model", "top-1 %", f"top-{gate.topk} %", "agreement %")]
    for name, s in (("fp32 (onnxruntime)", gate.fp32), ("int8 (onnxruntime)", gate.int8)):
        rows.append((name, pct(s.top1), pct(s.top5), pct(s.agreement)))
    return rows


def verdict(gate: Gate) -> str:
    """e.g. ``gate: top-1 drop 0.28 pt <= --max-drop 1 pt: passed``."""
    measure = "top-1 drop" if gate.labelled else "disagreement with fp32"
    if gate.passed:
        return f"gate: {measure} {gate.drop_pt:.2f} pt <= --max-drop {gate.max_drop:g} pt: passed"
    return f"gate: {measure} {gate.drop_pt:.2f} pt > --max-drop {gate.max_drop:g} pt: FAILED"
