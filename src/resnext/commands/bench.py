"""``resnext bench``: images per second of every path this device supports, in one run."""

from __future__ import annotations

import argparse
import sys

import torch

from ..bench import BenchRow, bench_model, matmul_ceiling, precisions
from ..benchmarking import cpu_name
from ..errors import ConfigError
from ..models import create_model
from ..table import format_table
from .common import add_runtime_options, runtime_from_args

DEFAULT_MODELS = ("resnext50_32x4d", "resnext29_8x64d")
_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


HELP = "images/s of our back-ends and precisions beside torchvision and onnxruntime"
DESCRIPTION = """\
Measure, in one run, the inference paths and a training step of each model on this device: the
median of --repeat timed batches, the ratio to the reference (torchvision's default path where
it has the model, else ours in NCHW fp32), the share of this device's measured dense-math
ceiling, and peak memory.
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--models", nargs="+", default=list(DEFAULT_MODELS), metavar="NAME", help="registry names"
    )
    p.add_argument("--batch", type=int, default=16, help="images per batch (default 16)")
    p.add_argument("--repeat", type=int, default=5, help="timed batches per path (median)")
    add_runtime_options(p, device_only=True)  # every back-end and precision is measured
    p.add_argument("--threads", type=int, help="CPU threads (default: torch's)")
    p.add_argument("--no-onnx", action="store_true", help="skip onnxruntime")
    p.add_argument(
        "--no-int8",
        action="store_true",
        help="skip the onnxruntime int8 row (quantized as resnext quantize does, calibrated on "
        "the benchmark's own batch)",
    )
    p.add_argument("--no-train", action="store_true", help="skip the training step")
    p.add_argument(
        "--no-compile",
        action="store_true",
        help="skip torch.compile paths (each compiles for tens of seconds)",
    )


def run(args: argparse.Namespace) -> int:
    if args.batch < 1 or args.repeat < 1:
        raise ConfigError("--batch and --repeat must be at least 1")
    for name in args.models:
        try:
            with torch.device("meta"):  # checks the name builds, allocating nothing
                create_model(name)
        except ValueError as e:
            raise ConfigError(str(e)) from e
    if args.threads is not None:
        if args.threads < 1:
            raise ConfigError(f"--threads must be at least 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    device = runtime_from_args(args).resolve_device(what="--device")
    where = cpu_name() if device.type == "cpu" else torch.cuda.get_device_name(device)
    threads = f", {torch.get_num_threads()} threads" if device.type == "cpu" else ""
    print(f"device {device}: {where}{threads}; torch {torch.__version__}")
    ceilings = {p: matmul_ceiling(device, _DTYPES[p]) for p in precisions(device)}
    print(
        "dense ceiling (best of a matmul and a 1x1 convolution): "
        + ", ".join(f"{p} {c / 1e9:.0f} GFLOP/s" for p, c in ceilings.items())
        + f"; batch {args.batch}, median of {args.repeat}"
    )
    rows: list[BenchRow] = []
    for name in args.models:
        rows += bench_model(
            name,
            batch=args.batch,
            repeat=args.repeat,
            device=device,
            onnx=not args.no_onnx,
            int8=not args.no_int8,
            train=not args.no_train,
            compile=not args.no_compile,
            log=lambda m: print(m, file=sys.stderr, flush=True),
        )
    print(format_table(table(rows, ceilings, device.type), left=3))
    print(
        "of ceiling: the model's FLOPs (2 x multiply-adds, x3 for a training step) per second "
        "over the measured dense ceiling at that precision; kernels that do fewer multiplies "
        "(e.g. Winograd convolutions) can pass 100%. vs ref: inference rows against the first "
        "inference row, training rows against the first training row. first call s: the "
        "untimed first call (compiling, packing weights) before the timed ones. int8: no "
        "int8 ceiling is measured."
    )
    return 0


def table(
    rows: list[BenchRow], ceilings: dict[str, float], device_type: str = "cpu"
) -> list[tuple[str, ...]]:
    """Header and one line a row: images/s, ratio to the model's reference, ceiling share."""
    memory = "peak RSS MB" if device_type == "cpu" else "peak MB"
    head = ("model", "path", "precision", "img/s", "vs ref", "of ceiling", memory, "first call s")
    out = [head]
    refs = {(r.model, r.kind): r for r in rows if r.reference}
    for r in rows:
        ref = refs.get((r.model, r.kind))
        achieved = r.img_per_s * r.flops_per_image
        ceiling = ceilings.get(r.precision)  # none measured for int8
        out.append(
            (
                r.model,
                r.path,
                r.precision,
                f"{r.img_per_s:.1f}",
                f"{r.img_per_s / ref.img_per_s:.2f}x" if ref else "-",
                f"{100 * achieved / ceiling:.0f}%" if ceiling else "-",
                f"{r.peak_mb:.0f}" if r.peak_mb is not None else "-",
                f"{r.first_call_s:.1f}" if r.first_call_s is not None else "-",
            )
        )
    return out
