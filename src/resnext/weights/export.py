"""Export: a model as ONNX, TorchScript or a safetensors model file, each checked on the spot.

Every exported file carries (ONNX metadata, TorchScript extra file) or sits beside
(``NAME.onnx.json``, ``NAME.pt.json``: the layout of :mod:`resnext.weights.modelfile`)
everything a deployment needs:
the architecture, the class names and the evaluation preprocessing. Before a file is put in
place it is read back by its own runtime (onnxruntime, ``torch.jit.load``, ``load_checkpoint``)
and its logits are compared with the eager model's on random batches of two sizes; a file
that disagrees is deleted and a :class:`WeightsError` says by how much.

``onnx``/``onnxruntime`` are imported only here, on use, so ``import resnext`` stays light.
"""

from __future__ import annotations

import copy
import importlib
import json
import math
import os
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..data.preprocess import Preprocess
from ..errors import ConfigError, WeightsError
from .checkpoint import VERSION, atomic_write, load_checkpoint, model_from_checkpoint
from .modelfile import MODEL_FORMAT, save_model_file

FORMATS = ("onnx", "torchscript", "safetensors")
#: The file name endings each format is written under.
SUFFIXES: dict[str, tuple[str, ...]] = {
    "onnx": (".onnx",),
    "torchscript": (".pt", ".ts"),
    "safetensors": (".safetensors",),
}
#: Largest |exported - eager| logit allowed for ONNX and TorchScript (fp32 reorderings stay
#: near 1e-6; a wrong graph is off by far more). safetensors must match exactly.
TOLERANCE = 1e-4
#: ONNX ``metadata_props`` keys; each value is a JSON string.
ONNX_KEYS = ("resnext.arch", "resnext.classes", "resnext.preprocess", "resnext.source")
TORCHSCRIPT_EXTRA = "resnext.json"  # the TorchScript archive's extra file holding the JSON
INPUT_NAME, OUTPUT_NAME = "images", "logits"
_MIN_OPSET, _DYNAMO_MIN_OPSET = 7, 18  # lowest opset of torch's TorchScript-based / dynamo exporter
_EXPORT_BATCH = 2  # example batch for tracing; 1 would let the exporter specialise the axis


@dataclass(frozen=True)
class ExportReport:
    """What was written and how it was checked."""

    format: str  # onnx | torchscript | safetensors
    path: Path  # the exported file
    sidecar: Path  # the JSON beside it
    size_bytes: int  # of the exported file
    max_abs_diff: float  # largest |exported - eager| logit over the checked batches
    batch_sizes: tuple[int, ...]  # batch sizes checked (two: the batch axis is dynamic)
    exporter: str  # how the file was made, e.g. "torch.onnx.export (dynamo)"
    checked_with: str  # the runtime that read it back, e.g. "onnxruntime"
    opset: int | None = None  # ONNX only: the default-domain opset
    notes: tuple[str, ...] = ()  # e.g. why the dynamo exporter was not used

    def check_line(self) -> str:
        """e.g. ``onnxruntime vs eager: max abs diff 3.1e-06 on batches of 2 and 3``."""
        sizes = " and ".join(map(str, self.batch_sizes))
        diff = f"{self.max_abs_diff:.2g}"
        return f"{self.checked_with} vs eager: max abs diff {diff} on batches of {sizes}"


def check_output_path(path: str | Path, fmt: str) -> Path:
    """The output path, refused early (before any work) if its suffix does not fit ``fmt`` or
    its folder cannot be created or written."""
    if fmt not in FORMATS:
        raise ConfigError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    path, want = Path(path), " or ".join(SUFFIXES[fmt])
    if path.suffix not in SUFFIXES[fmt]:
        raise ConfigError(f"a {fmt} export is written as {want}, got {str(path)!r}")
    if path.is_dir():
        raise ConfigError(f"{str(path)!r} is a folder; give the file to write, e.g. model{want}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"cannot create the output folder {str(path.parent)!r}: {e}") from e
    if not os.access(path.parent, os.W_OK):
        raise ConfigError(f"the output folder {str(path.parent)!r} is not writable")
    return path


def model_description(
    model: nn.Module,
    *,
    classes: list[str],
    preprocess: Preprocess,
    source: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The model file's JSON (format, version, arch, classes, preprocess, source) for
    ``model``; refuses a model without an ``arch`` record or a wrong number of class names."""
    arch = getattr(model, "arch", None)
    if arch is None or not hasattr(arch, "to_dict"):
        raise WeightsError("only resnext models (with an .arch record) can be exported")
    if len(classes) != arch.num_classes:
        raise WeightsError(
            f"{len(classes)} class names for a model with {arch.num_classes} outputs"
        )
    return {
        "format": MODEL_FORMAT,
        "version": VERSION,
        "arch": arch.to_dict(),
        "classes": list(classes),
        "preprocess": preprocess.to_dict(),
        "source": dict(source or {}),
    }


def parse_onnx_metadata(props: Mapping[str, str], path: str | Path) -> dict[str, Any]:
    """Our description back from an ONNX file's metadata (``{"arch", "classes",
    "preprocess", "source"}``); a clear error for an ONNX file that lacks it."""
    missing = [k for k in ONNX_KEYS[:3] if k not in props]
    if missing:
        raise WeightsError(
            f"{str(path)!r} is an ONNX file without resnext metadata ({', '.join(missing)} "
            "missing), so its classes and preprocessing are unknown; re-export it with "
            "`resnext export CHECKPOINT --format onnx`, or load the original weights with "
            "--model NAME --weights FILE"
        )
    try:
        return {k.removeprefix("resnext."): json.loads(props.get(k) or "{}") for k in ONNX_KEYS}
    except json.JSONDecodeError as e:
        raise WeightsError(f"{str(path)!r}: unreadable resnext metadata: {e}") from e


def export_onnx(
    model: nn.Module,
    path: str | Path,
    *,
    classes: list[str],
    preprocess: Preprocess,
    source: Mapping[str, Any] | None = None,
    opset: int | None = None,
    check_batch: int = 2,
) -> ExportReport:
    """Write ``path`` (.onnx): input ``images`` (N, C, S, S) with a dynamic batch axis, output
    ``logits``, our description in ``metadata_props``; and ``NAME.onnx.json`` beside it. Checked in
    onnxruntime (CPU) against the eager model on batches of ``check_batch`` and one more."""
    path = check_output_path(path, "onnx")
    meta = model_description(model, classes=classes, preprocess=preprocess, source=source)
    onnx = _require("onnx")
    _require("onnxruntime")  # before the export: the check needs it
    newest = onnx.defs.onnx_opset_version()
    if opset is not None and not _MIN_OPSET <= opset <= newest:
        raise ConfigError(
            f"ONNX opset {opset} is out of range: {_MIN_OPSET} to {newest} (the installed onnx)"
        )
    model = _frozen_copy(model)
    example = _random_batch(model, preprocess, _EXPORT_BATCH)
    tmp = path.with_name(f".{path.name}.partial")
    try:
        exporter, notes = _onnx_export(model, example, tmp, opset)
        proto = onnx.load(str(tmp))
        for key in ONNX_KEYS:
            entry = proto.metadata_props.add()
            entry.key, entry.value = key, json.dumps(meta[key.removeprefix("resnext.")])
        onnx.save(proto, str(tmp))
        onnx.checker.check_model(str(tmp))
        used = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
        if opset is not None and used != opset:
            raise WeightsError(f"asked for ONNX opset {opset} but the exporter wrote {used}")
        session = onnx_session(tmp)

        def run(x: torch.Tensor) -> torch.Tensor:
            return torch.from_numpy(session.run([OUTPUT_NAME], {INPUT_NAME: x.numpy()})[0])

        diff, sizes = _compare(model, run, preprocess, check_batch, exact=False, what="ONNX")
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    side = _write_sidecar(path, meta)
    return ExportReport(
        format="onnx",
        path=path,
        sidecar=side,
        size_bytes=path.stat().st_size,
        max_abs_diff=diff,
        batch_sizes=sizes,
        exporter=exporter,
        checked_with="onnxruntime",
        opset=used,
        notes=notes,
    )


def export_torchscript(
    model: nn.Module,
    path: str | Path,
    *,
    classes: list[str],
    preprocess: Preprocess,
    source: Mapping[str, Any] | None = None,
    check_batch: int = 2,
) -> ExportReport:
    """Write ``path`` (.pt/.ts): the traced model with our description as the archive's extra
    file ``resnext.json``, and the same JSON beside it. Checked with ``torch.jit.load``."""
    path = check_output_path(path, "torchscript")
    meta = model_description(model, classes=classes, preprocess=preprocess, source=source)
    model = _frozen_copy(model)
    example = _random_batch(model, preprocess, _EXPORT_BATCH)
    tmp = path.with_name(f".{path.name}.partial")
    text = json.dumps(meta, indent=2)
    try:
        # torch.jit is deprecated (FutureWarning) but still the format asked for here.
        with warnings.catch_warnings(), torch.no_grad():
            warnings.filterwarnings("ignore", category=FutureWarning, message=r".*torch\.jit")
            traced = torch.jit.trace(model, (example,), check_trace=False)  # checked below
            torch.jit.save(traced, str(tmp), _extra_files={TORCHSCRIPT_EXTRA: text})
            extra = {TORCHSCRIPT_EXTRA: ""}
            loaded = torch.jit.load(str(tmp), map_location="cpu", _extra_files=extra)
        if json.loads(extra[TORCHSCRIPT_EXTRA]) != meta:
            raise WeightsError(
                f"{str(path)!r}: the metadata read back differs from what was written"
            )
        diff, sizes = _compare(
            model, loaded, preprocess, check_batch, exact=False, what="TorchScript"
        )
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    side = _write_sidecar(path, meta)
    notes = ("TorchScript is deprecated in PyTorch; ONNX or safetensors will outlast it",)
    return ExportReport(
        format="torchscript",
        path=path,
        sidecar=side,
        size_bytes=path.stat().st_size,
        max_abs_diff=diff,
        batch_sizes=sizes,
        exporter="torch.jit.trace",
        checked_with="torch.jit.load",
        notes=notes,
    )


def export_safetensors(
    model: nn.Module,
    path: str | Path,
    *,
    classes: list[str],
    preprocess: Preprocess,
    source: Mapping[str, Any] | None = None,
    check_batch: int = 2,
) -> ExportReport:
    """Write a model file (``path`` .safetensors + ``NAME.json``, see
    :mod:`resnext.weights.modelfile`). Checked by loading it back with ``load_checkpoint`` and
    ``model_from_checkpoint``: the logits must be bit-for-bit the eager model's."""
    path = check_output_path(path, "safetensors")
    model_description(model, classes=classes, preprocess=preprocess, source=source)
    model = _frozen_copy(model)
    _, side = save_model_file(
        path, model, classes=classes, preprocess=preprocess.to_dict(), source=dict(source or {})
    )
    try:
        loaded = model_from_checkpoint(load_checkpoint(path)).eval()
        diff, sizes = _compare(
            model, loaded, preprocess, check_batch, exact=True, what="model file"
        )
    except BaseException:
        path.unlink(missing_ok=True)
        side.unlink(missing_ok=True)
        raise
    return ExportReport(
        format="safetensors",
        path=path,
        sidecar=side,
        size_bytes=path.stat().st_size,
        max_abs_diff=diff,
        batch_sizes=sizes,
        exporter="save_model_file",
        checked_with="load_checkpoint",
    )


def export_model(
    model: nn.Module,
    path: str | Path,
    fmt: str,
    *,
    classes: list[str],
    preprocess: Preprocess,
    source: Mapping[str, Any] | None = None,
    opset: int | None = None,
    check_batch: int = 2,
) -> ExportReport:
    """Export in ``fmt`` (onnx | torchscript | safetensors); ``opset`` is for ONNX only."""
    check_output_path(path, fmt)
    if opset is not None and fmt != "onnx":
        raise ConfigError(f"--opset applies to ONNX exports only, not {fmt}")
    kw: dict[str, Any] = {"classes": classes, "preprocess": preprocess, "source": source}
    if fmt == "onnx":
        return export_onnx(model, path, opset=opset, check_batch=check_batch, **kw)
    if fmt == "torchscript":
        return export_torchscript(model, path, check_batch=check_batch, **kw)
    return export_safetensors(model, path, check_batch=check_batch, **kw)


def onnx_session(path: str | Path) -> Any:
    """An onnxruntime session (CPU provider, torch's thread count) of an ONNX file."""
    ort = _require("onnxruntime")
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own exception types for a bad file
        raise WeightsError(f"{str(path)!r} is not a loadable ONNX file: {_first_line(e)}") from e


def _require(name: str) -> Any:
    """Import ``onnx``/``onnxruntime`` on use, with the install hint if absent."""
    try:
        return importlib.import_module(name)
    except ImportError as e:
        raise ConfigError(
            f"ONNX export and loading need the {name} package, which is not installed ({e}); "
            "pip install onnx onnxscript onnxruntime"
        ) from e


def _onnx_export(
    model: nn.Module, example: torch.Tensor, path: Path, opset: int | None
) -> tuple[str, tuple[str, ...]]:
    """torch.export-based (dynamo) exporter first; the TorchScript-based one if it fails."""
    names = {"input_names": [INPUT_NAME], "output_names": [OUTPUT_NAME], "opset_version": opset}
    if opset is not None and opset < _DYNAMO_MIN_OPSET:
        # The dynamo exporter writes opset 18 and up; its down-conversion fails on these
        # models (a Reduce node's axes) and leaves 18, so go to the older exporter directly.
        reason = f"opset {opset} < {_DYNAMO_MIN_OPSET}, the dynamo exporter's lowest"
        return _legacy_onnx_export(model, example, path, names, reason)
    try:
        # Dynamic batch and image size: the same file serves another test crop (--crop 320).
        dims = {0: torch.export.Dim("batch", min=1)}
        dims |= {i: torch.export.Dim(n, min=16) for i, n in ((2, "height"), (3, "width"))}
        torch.onnx.export(
            model,
            (example,),
            str(path),
            dynamo=True,
            dynamic_shapes=(dims,),
            external_data=False,  # one self-contained file (models here are far below 2 GB)
            verbose=False,
            **names,
        )
        return "torch.onnx.export (dynamo)", ()
    except Exception as e:  # any exporter failure: try the other exporter, keep the reason
        reason = f"dynamo exporter failed ({type(e).__name__}: {_first_line(e)})"
    return _legacy_onnx_export(model, example, path, names, reason)


def _legacy_onnx_export(
    model: nn.Module, example: torch.Tensor, path: Path, names: dict[str, Any], reason: str
) -> tuple[str, tuple[str, ...]]:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # "legacy exporter" notice
            torch.onnx.export(
                model,
                (example,),
                str(path),
                dynamo=False,
                dynamic_axes={
                    INPUT_NAME: {0: "batch", 2: "height", 3: "width"},
                    OUTPUT_NAME: {0: "batch"},
                },
                **names,
            )
    except Exception as e:
        raise WeightsError(
            f"ONNX export failed: {reason}; the TorchScript-based exporter failed "
            f"({type(e).__name__}: {_first_line(e)})"
        ) from e
    return "torch.onnx.export (dynamo=False, TorchScript-based)", (reason,)


def _compare(
    model: nn.Module,
    exported: Callable[[torch.Tensor], torch.Tensor],
    preprocess: Preprocess,
    check_batch: int,
    *,
    exact: bool,
    what: str,
) -> tuple[float, tuple[int, ...]]:
    """Max |exported - eager| over random batches of ``check_batch`` and ``check_batch + 1``
    images; raises :class:`WeightsError` above the tolerance (any difference if ``exact``)."""
    if check_batch < 1:
        raise ConfigError(f"check_batch must be at least 1, got {check_batch}")
    sizes = (check_batch, check_batch + 1)
    diffs = []
    for n in sizes:
        x = _random_batch(model, preprocess, n, seed=n)
        with torch.no_grad():
            want = model(x)
            got = exported(x)
        if got.shape != want.shape:
            raise WeightsError(
                f"the exported {what} gives logits of shape {tuple(got.shape)} for a batch of "
                f"{n}, the eager model {tuple(want.shape)}; nothing was kept"
            )
        diffs.append((got.float() - want.float()).abs().max().item())
    worst = float("nan") if any(math.isnan(d) for d in diffs) else max(diffs)
    limit = 0.0 if exact else TOLERANCE
    if not worst <= limit:
        raise WeightsError(
            f"the exported {what} disagrees with the eager model: max abs logit difference "
            f"{worst:.3g} > {limit:g} on batches of {sizes[0]} and {sizes[1]}; nothing was kept"
        )
    return worst, sizes


def _frozen_copy(model: nn.Module) -> nn.Module:
    """A CPU fp32 copy in eval mode, so the caller's model keeps its device, dtype and mode."""
    return copy.deepcopy(model).cpu().float().eval()


def _random_batch(model: nn.Module, pre: Preprocess, n: int, seed: int = 0) -> torch.Tensor:
    """``n`` standard-normal images (the scale of normalised inputs), from a fixed seed."""
    chans = getattr(getattr(model, "arch", None), "in_chans", 3)
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, chans, pre.image_size, pre.image_size, generator=gen)


def _write_sidecar(path: Path, meta: dict[str, Any]) -> Path:
    """``model.onnx`` -> ``model.onnx.json`` (not ``model.json``: that is the JSON of a
    ``model.safetensors`` model file, which an export next to it must not overwrite)."""
    side = path.with_name(path.name + ".json")
    atomic_write(side, lambda f: f.write((json.dumps(meta, indent=2) + "\n").encode()))
    return side


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else "no message"
