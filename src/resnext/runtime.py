"""Where and how models run: the device, the precision (one notion for training and
inference) and process-wide torch settings. Used by the engine and by inference alike."""

from __future__ import annotations

import contextlib
import functools
import os
import warnings
from dataclasses import dataclass, replace
from typing import Any

import torch

from .errors import ConfigError

#: The one precision notion: what the forward pass computes in. fp32 = no autocast;
#: bf16 / fp16 = autocast to that dtype (weights and reductions stay fp32).
PRECISIONS = ("fp32", "bf16", "fp16")
#: ``train.precision`` also takes ``auto``: see :func:`auto_train_precision`.
TRAIN_PRECISIONS = ("auto", *PRECISIONS)
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(name: str | torch.device | None = "auto", what: str = "device") -> torch.device:
    """``auto`` (or None) -> CUDA if present, else CPU; ``cpu``; ``cuda``; ``cuda:N``.

    Under ``torchrun`` (``WORLD_SIZE`` > 1) each process takes its local rank's GPU
    (``LOCAL_RANK``), as DDP expects; an explicit ``cuda:N`` is refused there, because it
    would put every process on GPU N. ``what`` names the setting in error messages
    (``train.device``, ``--device``).
    """
    if isinstance(name, torch.device):
        return name
    name = "auto" if name is None else str(name).strip()
    if name not in ("auto", "cpu", "cuda") and not _is_cuda_index(name):
        raise ConfigError(f"{what} must be auto, cpu, cuda or cuda:N, got {name!r}")
    if name == "cpu" or (name == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ConfigError(f"{what}={name!r} but CUDA is not available; use auto or cpu")
    count = torch.cuda.device_count()
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        if _is_cuda_index(name):
            raise ConfigError(
                f"{what}={name!r} under torchrun: every process would use that one GPU. Under "
                f"torchrun each process takes the GPU of its LOCAL_RANK; set {what}=cuda (or "
                "auto) and choose GPUs with CUDA_VISIBLE_DEVICES"
            )
        index = int(os.environ.get("LOCAL_RANK", "0"))
        if index >= count:
            raise ConfigError(
                f"LOCAL_RANK {index} but only {count} GPU(s) are visible: start at most {count} "
                "processes per node (torchrun --nproc_per_node)"
            )
        return torch.device("cuda", index)
    index = int(name.split(":")[1]) if _is_cuda_index(name) else 0
    if index >= count:
        raise ConfigError(f"{what}={name!r} but only {count} GPU(s) are visible (cuda:0..)")
    return torch.device("cuda", index)


@dataclass(frozen=True)
class RuntimeOptions:
    """How and where a model runs for inference: one choice that ``Classifier``, ``eval``,
    ``predict``, ``serve`` and ``bench`` share (``--device``, ``--precision``, ``--backend``).

    The values are checked where they are used (:func:`resolve_device`,
    :func:`check_precision`, the back-ends), each error naming the option.
    """

    device: str | torch.device | None = "auto"  # auto (CUDA if present) | cpu | cuda | cuda:N
    precision: str = "fp32"  # what the forward pass computes in: fp32 | bf16 | fp16 (autocast)
    backend: str = "auto"  # auto | eager | compile | onnxruntime (resnext.inference.backends)

    @property
    def device_named(self) -> bool:
        """Whether a device was asked for (rather than left to ``auto``)."""
        return self.device not in (None, "auto")

    def resolve_device(self, what: str = "device") -> torch.device:
        """The device these options run on (see :func:`resolve_device`)."""
        return resolve_device(self.device, what=what)

    def for_onnx(self) -> RuntimeOptions:
        """These options for an exported ``.onnx`` file: it runs in onnxruntime on the CPU,
        so ``auto`` must not pick a GPU for it; a device that was named is kept (and refused
        there if it is not the CPU)."""
        return self if self.device_named else replace(self, device="cpu")


def _is_cuda_index(name: str) -> bool:
    head, _, index = name.partition(":")
    return head == "cuda" and index.isdigit()


@functools.cache
def cpu_flags() -> frozenset[str]:
    """This CPU's feature flags (the first ``flags`` line of /proc/cpuinfo; empty where
    there is none, e.g. not Linux)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512_BF16 or AMX-BF16, read from
    /proc/cpuinfo). Without it bf16 is emulated and runs several times slower than fp32."""
    return bool({"avx512_bf16", "amx_bf16"} & cpu_flags())


def cpu_has_vnni() -> bool:
    """Whether this CPU has an int8 dot-product instruction (AVX512_VNNI, AVX-VNNI or
    AMX-INT8): without it int8 convolutions take AVX2's u8 x s8 pair-add, which can saturate
    and gains little over fp32."""
    return bool({"avx512_vnni", "avx_vnni", "amx_int8"} & cpu_flags())


def auto_train_precision(device: torch.device) -> tuple[str, str]:
    """What ``train.precision=auto`` trains in on ``device``, and why: bf16 where the device
    computes it natively (a CPU with AVX512_BF16 or AMX; a CUDA GPU with bf16, Ampere and
    later), fp16 (with a gradient scaler) on Volta/Turing GPUs, fp32 elsewhere. Never emulated
    bf16: on a CPU without it bf16 is several times slower than fp32."""
    if device.type == "cpu":
        if cpu_has_native_bf16():
            return "bf16", "this CPU computes bf16 natively (AVX512_BF16 or AMX)"
        return "fp32", "this CPU has no native bf16 (no AVX512_BF16, no AMX)"
    if device.type == "cuda":
        major, _ = torch.cuda.get_device_capability(device)
        if major >= 8:  # Ampere and later
            return "bf16", "this GPU computes bf16 natively"
        if major >= 7:  # Volta/Turing: fp16 tensor cores
            return "fp16", "this GPU has fp16 tensor cores but no bf16; fp16 with a gradient scaler"
        return "fp32", "this GPU has neither bf16 nor fp16 tensor cores"
    return "fp32", f"no mixed precision chosen on {device.type}"


def check_precision(precision: str, device: torch.device, what: str = "precision") -> None:
    """Refuse a precision the device cannot run; warn where it would be slow."""
    if precision not in PRECISIONS:
        raise ConfigError(f"{what} must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "fp16" and device.type != "cuda":
        raise ConfigError(f"{what}=fp16 needs a CUDA device; on CPU use bf16 or fp32")
    if precision == "bf16" and device.type == "cpu" and not cpu_has_native_bf16():
        warnings.warn(
            f"{what}=bf16 on a CPU without native bf16 (no AVX512_BF16/AMX): it is emulated "
            "and typically several times slower than fp32",
            stacklevel=2,
        )


def autocast_dtype(precision: str) -> torch.dtype | None:
    """The autocast dtype of a precision (None for fp32)."""
    if precision not in PRECISIONS:
        raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    return _DTYPES.get(precision)


def autocast(device: torch.device, precision: str) -> Any:
    """The autocast context of ``precision`` on ``device`` (a no-op for fp32)."""
    dtype = autocast_dtype(precision)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def configure_torch(deterministic: bool, threads: int | None) -> None:
    """Thread count and deterministic kernels, set before any model runs (process-wide)."""
    if threads is not None:
        if threads < 1:
            raise ConfigError(f"train.threads must be at least 1, got {threads}")
        torch.set_num_threads(threads)
    if deterministic:
        # warn_only: CUDA ops without a deterministic kernel warn instead of stopping
        # the run; every op this model uses on CPU is deterministic at a fixed thread count.
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
    else:
        torch.backends.cudnn.benchmark = True
