"""Inference back-ends behind one interface: a module that maps a preprocessed batch to
logits.

``eager``        the PyTorch model with BatchNorm folded into the convolutions, in
                 channels_last (:class:`~resnext.inference.optimize.EagerRunner`).
``compile``      the same, compiled by ``torch.compile`` (inductor, freezing); tens of seconds
                 of warm-up per batch shape (:class:`~resnext.inference.optimize.CompiledRunner`).
``onnxruntime``  the same weights exported to ONNX once (checked against eager by
                 :func:`~resnext.export.export_onnx`) and run in onnxruntime, the export
                 cached by a hash of the architecture and weights
                 (:mod:`resnext.export.onnx_cache`). CPU, fp32.
``auto``         chosen by :func:`choose_backend`'s rule, from ``resnext bench``'s measurements.
"""

from __future__ import annotations

import importlib.util
import warnings

import torch
from torch import nn

from ..data.preprocess import Preprocess
from ..errors import ConfigError

BACKENDS = ("auto", "eager", "compile", "onnxruntime")


#: What the onnxruntime back-end imports: onnx and onnxruntime, and onnxscript for the
#: torch.onnx exporter. All three are dependencies of a plain ``pip install resnext``.
ONNX_MODULES = ("onnx", "onnxruntime", "onnxscript")


def choose_backend(device: torch.device, precision: str) -> tuple[str, str]:
    """What ``auto`` runs, and why (the rule, from ``resnext bench`` on a Zen 5 CPU,
    resnext50_32x4d, batch 16, five runs, vs torchvision's default path): onnxruntime for
    fp32 on the CPU (2.9-3.0x; compile 2.0-2.4x, eager 1.8-2.4x); eager for bf16/fp16
    (autocast; bf16 eager 4.1-5.0x, compile 4.4-5.5x: -4% to +29% over eager, not worth a
    ~30 s warm-up per shape by default) and on CUDA (not measured here); eager where a module
    onnxruntime needs is missing, the reason then naming it and what to install."""
    if device.type != "cpu":
        return "eager", f"{device.type}: eager"
    if precision != "fp32":
        return "eager", f"{precision} runs eager (autocast)"
    hint = fast_path_missing()
    if hint is not None:
        return "eager", hint
    return "onnxruntime", "fp32 on the CPU: onnxruntime is the fastest path measured"


def missing_onnx_modules() -> list[str]:
    """The modules of :data:`ONNX_MODULES` that cannot be imported here."""
    return [m for m in ONNX_MODULES if not _installed(m)]


def fast_path_missing() -> str | None:
    """None where the onnxruntime back-end can run; else which modules it lacks, the pip
    command that installs them and what they would bring (fp32 on the CPU)."""
    missing = missing_onnx_modules()
    if not missing:
        return None
    return (
        f"{', '.join(missing)} not installed, so not the onnxruntime back-end "
        f"(pip install {' '.join(missing)}); resnext bench measured it 1.1-1.5x eager for "
        "fp32 on the CPU"
    )


def _installed(module: str) -> bool:
    # find_spec: whether it is installed, without paying its import here. A module set to
    # None in sys.modules (how an import is blocked) is missing too.
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def make_backend(
    model: nn.Module,
    name: str,
    *,
    classes: list[str],
    preprocess: Preprocess,
    device: torch.device,
    precision: str,
) -> tuple[nn.Module, str]:
    """The module that runs ``model`` on back-end ``name`` (``auto``: see
    :func:`choose_backend`), and the back-end's name; refused where it cannot run."""
    if name not in BACKENDS:
        raise ConfigError(f"back-end must be one of {', '.join(BACKENDS)}, got {name!r}")
    from ..export.onnx_runtime import OnnxModel
    from .optimize import CompiledRunner, EagerRunner

    chosen_by_rule = name == "auto"
    if chosen_by_rule:
        name, _ = choose_backend(device, precision)

    if isinstance(model, OnnxModel):
        if not chosen_by_rule and name != "onnxruntime":
            raise ConfigError(
                f"an exported .onnx file runs in onnxruntime, not the {name} back-end; "
                "give the checkpoint or model file it was exported from to run it in PyTorch"
            )
        # An int8 file (resnext quantize) is named as such wherever the back-end is printed.
        return model, "onnxruntime int8" if model.int8 else "onnxruntime"
    if name == "eager":
        return EagerRunner(model, device), "eager"
    if name == "compile":
        return CompiledRunner(model, device), "compile"
    if device.type != "cpu":
        raise ConfigError(f"the onnxruntime back-end runs on the CPU here, not {device}")
    if precision != "fp32":
        raise ConfigError(
            f"the onnxruntime back-end runs the fp32 export; precision {precision} runs eager "
            "(--backend eager)"
        )
    from ..export.onnx_cache import cached_onnx_model

    try:
        return cached_onnx_model(model, classes=classes, preprocess=preprocess), "onnxruntime"
    except (ConfigError, OSError) as e:  # e.g. a read-only home: no cache folder
        if not chosen_by_rule:
            raise
        warnings.warn(f"back-end auto: {e}; running eager instead", stacklevel=2)
        return EagerRunner(model, device), "eager"
