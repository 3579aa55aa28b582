"""Throughput of every inference and training path this device supports, in one run.

``resnext bench`` prints, for each model, images per second of torchvision's model on its
default path (the reference of the ``vs ref`` column; ours unoptimised where torchvision has
no such model), timm's where it is installed, and each of our inference back-ends (eager,
compile, onnxruntime) at each precision the device runs natively; then a training step,
torchvision's (the training rows' reference) and ours, eager and compiled. Each is the median
of several timed repeats after an untimed first call (whose time, compile included, is
shown), with the fraction of this device's measured dense ceiling it reaches and the peak
memory it took. Ratios are what carry between machines: absolute numbers belong to the CPU
named in the header.
"""

from __future__ import annotations

import contextlib
import copy
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .benchmarking import median_seconds, randomise_bn
from .models import create_model, default_input_size, measure
from .runtime import autocast, cpu_has_native_bf16


@dataclass
class BenchRow:
    """One measured path of one model."""

    model: str
    path: str  # e.g. "ours eager channels_last"
    precision: str
    batch: int
    img_per_s: float
    flops_per_image: float  # multiply-adds x 2 (x 3 for a training step)
    peak_mb: float | None  # peak memory while this path ran (process RSS on CPU)
    reference: bool = False  # the row others of its kind are compared with
    kind: str = "inference"  # inference | train
    first_call_s: float | None = None  # the untimed first call (compile, weight packing)

    @property
    def seconds_per_batch(self) -> float:
        return self.batch / self.img_per_s


def matmul_ceiling(device: torch.device, dtype: torch.dtype, repeat: int = 5) -> float:
    """FLOP/s of dense math on ``device``: the best of a large square matmul and the same
    product as a 1x1 convolution in channels_last (oneDNN's kernels; on AMD CPUs torch's
    matmul may take a slower path than its convolutions, so the matmul alone understates)."""
    n = 1024 if device.type == "cpu" else 8192
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    with torch.inference_mode():
        best = 2 * n**3 / median_seconds(lambda: _sync(device, a @ b), repeat)
        conv = nn.Conv2d(n, n, 1, bias=False).to(device, dtype)
        conv = conv.to(memory_format=torch.channels_last)
        x = torch.randn(1, n, 64, 64, device=device, dtype=dtype)
        x = x.contiguous(memory_format=torch.channels_last)
        seconds = median_seconds(lambda: _sync(device, conv(x)), repeat)
    return max(best, 2 * n * n * 64 * 64 / seconds)


@contextlib.contextmanager
def peak_memory(device: torch.device) -> Iterator[list[float]]:
    """Yields a list that holds, after the block, the peak memory in MB it used: CUDA's
    peak allocation, or on Linux the process's peak RSS (reset before the block)."""
    out: list[float] = []
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        yield out
        out.append(torch.cuda.max_memory_allocated(device) / 2**20)
        return
    try:  # writing 5 to clear_refs resets VmHWM, the peak resident set size
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        can = True
    except OSError:
        can = False
    yield out
    if can:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    out.append(int(line.split()[1]) / 1024)


def _sync(device: torch.device, value: object = None) -> object:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return value


def precisions(device: torch.device) -> list[str]:
    """The precisions this device computes natively (fp32 always)."""
    if device.type == "cuda":
        return ["fp32", "bf16", "fp16"] if torch.cuda.is_bf16_supported() else ["fp32", "fp16"]
    return ["fp32", "bf16"] if cpu_has_native_bf16() else ["fp32"]


def bench_model(
    name: str,
    *,
    batch: int,
    repeat: int,
    device: torch.device,
    onnx: bool = True,
    train: bool = True,
    compile: bool = True,
    int8: bool = True,
    log: Callable[[str], None] = lambda _: None,
) -> list[BenchRow]:
    """Every path of one registry model (random weights and BN statistics; eval-mode BN for
    inference, batch statistics for the training step). ``int8``: also the onnxruntime
    export quantized as ``resnext quantize`` does, calibrated on the benchmark's own batch."""
    from .inference.optimize import CompiledRunner, EagerRunner

    torch.manual_seed(0)
    size = default_input_size(name)
    model = create_model(name).eval()
    macs = measure(model, size).flops
    randomise_bn(model)  # so that folding BN is real work, as with trained weights
    model.to(device)
    x = torch.randn(batch, 3, size, size, device=device)
    xc = x.contiguous(memory_format=torch.channels_last)  # made outside inference mode
    rows: list[BenchRow] = []

    def run(path: str, precision: str, fn: Callable[[], object], kind: str = "inference"):
        log(f"  {name}: {path} {precision}")
        flops = (6 if kind == "train" else 2) * macs
        with peak_memory(device) as peak:
            start = time.perf_counter()
            _sync(device, fn())  # the first call: compiles, packs weights, warms caches
            first = time.perf_counter() - start
            seconds = median_seconds(lambda: _sync(device, fn()), repeat, warmup=0)
        reference = not any(r.kind == kind for r in rows)  # each kind's first row
        rows.append(
            BenchRow(name, path, precision, batch, batch / seconds, flops, None, reference, kind)
        )
        rows[-1].peak_mb = peak[0] if peak else None
        rows[-1].first_call_s = first

    reference, ref_path = _reference(name)  # torchvision's, or ours unoptimised
    reference.load_state_dict(model.state_dict())
    reference = reference.to(device).eval()
    with torch.inference_mode():
        run(ref_path, "fp32", lambda: reference(x))
        timm_model = _timm(name, model)
        if timm_model is not None:
            timm_model = timm_model.to(device).eval()
            run("timm eager nchw", "fp32", lambda: timm_model(x))
            del timm_model
        if ref_path != "ours plain nchw":
            run("ours plain nchw", "fp32", lambda: model(x))
        runners: list[tuple[str, Callable[[], nn.Module]]] = [
            ("ours eager (BN folded, channels_last)", lambda: EagerRunner(model, device))
        ]
        if compile:
            runners.append(("ours compile (inductor)", lambda: CompiledRunner(model, device)))
        for path, make in runners:
            for precision in precisions(device):
                runner = make()
                run(path, precision, lambda r=runner, p=precision: _autocast_call(r, x, device, p))
                del runner
    if onnx and device.type == "cpu":
        with tempfile.TemporaryDirectory() as tmp:
            session = _onnx_session(model, size, Path(tmp) / "bench.onnx")
            if session is not None:
                xn = x.cpu().numpy()
                run("ours onnxruntime", "fp32", lambda: session.run(None, {"images": xn}))
                del session
                if int8:
                    log(f"  {name}: quantizing (calibrated on the benchmark batch)")
                    q = _int8_session(Path(tmp) / "bench.onnx", xn)
                    run("ours onnxruntime int8", "int8", lambda: q.run(None, {"images": xn}))
                    del q
    if train:
        ref_train = copy.deepcopy(reference)
        run(f"{ref_path} train step", "fp32", _train_step(ref_train, x, device), kind="train")
        del ref_train
        for precision in precisions(device):
            step = _train_step(copy.deepcopy(model), xc, device, precision)
            run("ours train step channels_last", precision, step, kind="train")
        if compile:
            step = _train_step(copy.deepcopy(model), xc, device, "fp32", compiled=True)
            run("ours train step compiled channels_last", "fp32", step, kind="train")
    return rows


def _autocast_call(model: nn.Module, x: torch.Tensor, device: torch.device, precision: str):
    with autocast(device, precision):
        return model(x)


def _train_step(
    model: nn.Module,
    x: torch.Tensor,
    device: torch.device,
    precision: str = "fp32",
    compiled: bool = False,
) -> Callable[[], None]:
    """Forward, backward and an SGD step in train mode (BN batch statistics), in the
    memory format of ``x``."""
    if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        model = model.to(memory_format=torch.channels_last)
    model.train()
    forward = torch.compile(model) if compiled else model
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    y = torch.zeros(x.shape[0], dtype=torch.long, device=device)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        with autocast(device, precision):
            logits = forward(x)
        nn.functional.cross_entropy(logits.float(), y).backward()
        opt.step()

    return step


def _reference(name: str) -> tuple[nn.Module, str]:
    """torchvision's model of the same name (same parameter names), or a fresh copy of ours
    where torchvision has none; and the path's name in the table."""
    import torchvision

    builder = getattr(torchvision.models, name, None)
    if builder is None:
        return create_model(name), "ours plain nchw"
    return builder(weights=None), "torchvision eager nchw"


def _timm(name: str, model: nn.Module) -> nn.Module | None:
    """timm's model of the same name with ``model``'s weights, where timm is installed and
    has it (timm's ResNeXts use torchvision's parameter names)."""
    try:
        import timm
    except ImportError:
        return None
    if name not in timm.list_models(name):
        return None
    other = timm.create_model(name, pretrained=False)
    try:
        other.load_state_dict(model.state_dict())
    except RuntimeError:
        return None
    return other


def _onnx_session(model: nn.Module, size: int, path: Path):
    """An onnxruntime session of ``model`` (exported to ``path``), or None where
    onnx/onnxruntime are not installed."""
    try:
        import onnxruntime as ort
    except ImportError:
        return None
    x = torch.randn(1, 3, size, size)
    with open(os.devnull, "w") as null, contextlib.redirect_stdout(null):
        torch.onnx.export(
            model.eval(),
            (x,),
            str(path),
            input_names=["images"],
            output_names=["logits"],
            dynamic_shapes=({0: torch.export.Dim("batch", min=1)},),
            dynamo=True,
            external_data=False,
            verbose=False,
        )
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _int8_session(fp32: Path, batch: object):
    """A session of the fp32 export at ``fp32`` quantized with ``resnext quantize``'s
    settings for this CPU, calibrated on ``batch``."""
    import onnxruntime as ort

    from .export.to_int8 import choose_settings, quantize_file

    out = fp32.with_name("bench-int8.onnx")
    quantize_file(fp32, out, [batch], choose_settings()[0])
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    return ort.InferenceSession(str(out), options, providers=["CPUExecutionProvider"])
