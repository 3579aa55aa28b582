"""int8 paths on the same weights and calibration images, in one run: onnxruntime's static
quantization in the settings one may choose (QDQ or QOperator, u8 or s8 activations, 8- or
7-bit weights, all operators or convolutions only) and PyTorch's own (PT2E with the x86
inductor quantizer, then ``torch.compile``), against onnxruntime fp32.

For each path: images per second at one batch size (the paths are timed in turns, round by
round, so that a busy machine slows them alike; the median round counts), the ratio to
onnxruntime fp32, top-1 on the checkpoint's labelled split and top-1 agreement with fp32.

    python benchmarks/int8_paths.py runs/demo/best.pt --split test --batch 16

PT2E needs torchao (``pip install -e ".[bench]"``; in torch 2.14 ``torch.ao.quantization`` no longer
has ``quantize_pt2e``); without it that row is left out.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from resnext.benchmarking import cpu_name
from resnext.export import onnx_session
from resnext.export.to_int8 import Int8Settings, choose_settings, quantize_file
from resnext.inference.int8 import Quantization, QuantizeOptions
from resnext.runtime import cpu_has_vnni
from resnext.table import format_table

Run = Callable[[np.ndarray], np.ndarray]


def onnx_variants() -> dict[str, Int8Settings]:
    """The onnxruntime settings compared (``resnext quantize`` picks one by the CPU)."""
    return {
        "ort int8 QDQ u8/s8 8-bit": Int8Settings(),
        "ort int8 QDQ u8/s8 7-bit": Int8Settings(reduce_range=True),
        "ort int8 QDQ s8/s8 8-bit": Int8Settings(activations="s8"),
        "ort int8 QOperator u8/s8 7-bit": Int8Settings(format="qoperator", reduce_range=True),
        "ort int8 QDQ u8/s8 7-bit, Conv only": Int8Settings(reduce_range=True, ops=("Conv",)),
    }


def session_run(path: Path) -> Run:
    session = onnx_session(path)
    return lambda x: session.run(None, {"images": x})[0]


class _Relus(nn.Module):
    """``n`` ReLUs taken in turn: a block that calls its one ``relu`` three times would be one
    source partition with three outputs, which the x86 inductor quantizer refuses ("Input
    partition has more than one output node"); the same function, one module a call."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.each = nn.ModuleList(nn.ReLU() for _ in range(n))
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        relu = self.each[self.calls % len(self.each)]
        self.calls += 1
        return relu(x)


def distinct_relus(model: nn.Module) -> nn.Module:
    """A copy of ``model`` whose bottleneck blocks call a distinct ReLU module each time."""
    model = copy.deepcopy(model).eval()
    for block in model.modules():
        if isinstance(getattr(block, "relu", None), nn.ReLU) and hasattr(block, "conv3"):
            block.relu = _Relus(3)
    return model


def pt2e_run(model: torch.nn.Module, calibration: list[np.ndarray], batch: int) -> Run:
    """PT2E: export, X86InductorQuantizer (its default: static, per-channel weights), calibrate
    on the same batches, convert, compile with inductor (freezing, as its int8 path needs)."""
    from torchao.quantization.pt2e import move_exported_model_to_eval
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
    from torchao.quantization.pt2e.quantizer import x86_inductor_quantizer as xiq

    torch._inductor.config.freezing = True
    example = (torch.from_numpy(calibration[0][:batch]),)
    exported = torch.export.export(distinct_relus(model), example).module()
    quantizer = xiq.X86InductorQuantizer()
    quantizer.set_global(xiq.get_default_x86_inductor_quantization_config())
    prepared = prepare_pt2e(exported, quantizer)
    with torch.no_grad():
        for x in calibration:
            prepared(torch.from_numpy(x))
    converted = convert_pt2e(prepared)
    move_exported_model_to_eval(converted)
    compiled = torch.compile(converted)

    def run(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return compiled(torch.from_numpy(x)).numpy()

    return run


def fixed_batches(batches: list[np.ndarray], size: int) -> list[np.ndarray]:
    """Batches of exactly ``size`` (the last one padded by repeating images), so that each
    compiled path sees one shape."""
    x = np.concatenate(batches)
    pad = (-len(x)) % size
    x = np.concatenate([x, x[:pad]]) if pad else x
    return [x[i : i + size] for i in range(0, len(x), size)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoint", help="a trained resnext checkpoint (its splits are used)")
    p.add_argument("--split", default="test", choices=("val", "test"), help="labelled images")
    p.add_argument("--images", type=int, default=200, help="calibration images")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--repeat", type=int, default=5, help="timed rounds (median)")
    p.add_argument("--no-pt2e", action="store_true")
    args = p.parse_args()
    warnings.filterwarnings("ignore")

    tmp = Path(tempfile.mkdtemp(prefix="int8-paths-"))
    options = QuantizeOptions(
        args.checkpoint,
        tmp / "q.onnx",
        images=args.images,
        eval_split=args.split,
        batch_size=args.batch,
        max_drop=100,
    )
    q = Quantization(options)
    q.gate()  # the checked fp32 export (and the default int8 file)
    cal = fixed_batches([x for x, _ in q.calibration.batches(q.preprocess, args.batch)], args.batch)
    pairs = list(q.eval.batches(q.preprocess, args.batch))
    n_eval = sum(len(y) for _, y in pairs)
    evals = fixed_batches([x for x, _ in pairs], args.batch)
    labels = np.concatenate([y for _, y in pairs])

    paths: dict[str, tuple[Run, float]] = {"ort fp32 (reference)": (session_run(q.fp32_path), 0.0)}
    for name, settings in onnx_variants().items():
        out = tmp / f"{len(paths)}.onnx"
        seconds = quantize_file(q.fp32_path, out, cal, settings)
        paths[name] = (session_run(out), seconds)
    if not args.no_pt2e:
        try:
            start = time.perf_counter()
            run = pt2e_run(q.model, cal, args.batch)
            run(cal[0])  # compiles
            paths["PT2E X86Inductor + torch.compile"] = (run, time.perf_counter() - start)
        except Exception as e:  # torchao missing, or an export/compile failure: say which
            print(f"PT2E left out: {type(e).__name__}: {str(e).splitlines()[0]}")

    logits = {k: np.concatenate([r(x) for x in evals])[:n_eval] for k, (r, _) in paths.items()}
    ref = logits["ort fp32 (reference)"].argmax(1)
    x = evals[0]
    times: dict[str, list[float]] = {k: [] for k in paths}
    for _ in range(args.repeat):  # in turns: load on the machine falls on every path alike
        for k, (r, _) in paths.items():
            start = time.perf_counter()
            r(x)
            times[k].append(time.perf_counter() - start)
    speed = {k: args.batch / statistics.median(t) for k, t in times.items()}
    base = speed["ort fp32 (reference)"]
    default, why = choose_settings()
    rows = [("path", "img/s", "vs ort fp32", "top-1 %", "agreement %", "made in s")]
    for k in paths:
        top1 = 100 * float((logits[k].argmax(1) == labels).mean())
        agree = 100 * float((logits[k].argmax(1) == ref).mean())
        rows.append(
            (
                k,
                f"{speed[k]:.1f}",
                f"{speed[k] / base:.2f}x",
                f"{top1:.2f}",
                f"{agree:.2f}",
                f"{paths[k][1]:.0f}",
            )
        )
    print(
        f"{cpu_name()}, VNNI: {'yes' if cpu_has_vnni() else 'no'}, "
        f"{torch.get_num_threads()} threads, torch {torch.__version__}"
    )
    print(
        f"{q.model.arch.name}: {len(cal) * args.batch} calibration images ({q.calibration.what}),"
        f" {n_eval} images of the {q.eval.what}; batch {args.batch}, median of {args.repeat}"
    )
    print(format_table(rows))
    print(f"resnext quantize's default on this CPU: {default.describe()} ({why})")
    q.close()


if __name__ == "__main__":
    main()
