"""Argument-parsing pieces shared by the sub-commands that load a model (eval, predict,
serve) or measure one (bench)."""

from __future__ import annotations

import argparse

from ..inference.backends import BACKENDS
from ..runtime import PRECISIONS, RuntimeOptions


class IntermixedParser(argparse.ArgumentParser):
    """Accepts positionals after options (``eval a.pt --ten-crop b.pt data.root=x``), which
    plain ``parse_args`` refuses once a ``nargs="*"`` positional has been consumed."""

    _inside = False

    def parse_known_args(self, args=None, namespace=None):  # type: ignore[override]
        if self._inside:  # parse_known_intermixed_args calls back in here (Python < 3.13)
            return super().parse_known_args(args, namespace)
        self._inside = True
        try:
            return self.parse_known_intermixed_args(args, namespace)
        finally:
            self._inside = False


def add_model_options(p: argparse.ArgumentParser) -> None:
    """--model/--weights, --ema/--no-ema, --precision, --device, --no-progress."""
    p.add_argument("--model", help="registry name for --weights, e.g. resnext50_32x4d")
    p.add_argument("--weights", help="a plain state dict (.pth/.safetensors) for --model")
    add_ema_options(p, "use")
    add_runtime_options(p)
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def add_runtime_options(p: argparse.ArgumentParser, device_only: bool = False) -> None:
    """--backend, --precision, --device: how and where the model runs (``device_only``:
    --device alone, for bench, which measures every back-end and precision);
    :func:`runtime_from_args` reads them back."""
    if not device_only:
        _add_backend_and_precision(p)
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")


def _add_backend_and_precision(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--backend",
        choices=BACKENDS,
        default="auto",
        help="auto (onnxruntime for fp32 on the CPU, else eager); eager "
        "(PyTorch, BN folded, channels_last); compile (torch.compile: fastest for long "
        "jobs, tens of seconds of warm-up per batch shape); onnxruntime (the weights "
        "exported once, cached; fp32, CPU)",
    )
    p.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="fp32",
        help="forward pass in fp32, or bf16/fp16 autocast (fp16: CUDA only)",
    )


def runtime_from_args(args: argparse.Namespace) -> RuntimeOptions:
    """The :class:`~resnext.runtime.RuntimeOptions` of :func:`add_runtime_options`'s
    arguments (the defaults for those a command does not take)."""
    default = RuntimeOptions()
    return RuntimeOptions(
        device=args.device,
        precision=getattr(args, "precision", default.precision),
        backend=getattr(args, "backend", default.backend),
    )


def add_ema_options(p: argparse.ArgumentParser, verb: str) -> None:
    """--ema / --no-ema (``args.ema`` None = the weights each training run selected)."""
    ema = p.add_mutually_exclusive_group()
    ema.add_argument(
        "--ema",
        action="store_true",
        default=None,
        help=f"{verb} the EMA weights (default: the weights the training run selected)",
    )
    ema.add_argument(
        "--no-ema", dest="ema", action="store_false", help=f"{verb} the trained (non-EMA) weights"
    )
