"""The checked export every target goes through: write ``.partial``, read it back with the
target's own runtime, compare its logits with the eager model's, then put it in place and
write the JSON beside it. A file that disagrees is deleted and a :class:`WeightsError` says
by how much; nothing half-written is ever left under the asked-for name.

A target (:mod:`~resnext.export.to_onnx`, :mod:`~resnext.export.to_torchscript`,
:mod:`~resnext.export.to_safetensors`) is a :class:`Target`: how to write the file, how to
read it back, and how strictly it must agree; ``Target.export`` is the skeleton.
"""

from __future__ import annotations

import copy
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..checkpoint import model_description
from ..checkpoint.writing import write_json
from ..data.preprocess import Preprocess
from ..errors import ConfigError, WeightsError

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
EXPORT_BATCH = 2  # example batch for tracing; 1 would let the exporter specialise the axis

Logits = Callable[[torch.Tensor], torch.Tensor]


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


@dataclass(frozen=True)
class Written:
    """What a target's writer reports about the file it wrote."""

    exporter: str  # how the file was made
    notes: tuple[str, ...] = ()
    opset: int | None = None


def export_sidecar(path: Path) -> Path:
    """``model.onnx`` -> ``model.onnx.json`` (not ``model.json``: that is the JSON of a
    ``model.safetensors`` model file, which an export next to it must not overwrite)."""
    return path.with_name(path.name + ".json")


def _no_extras(partial: Path) -> list[Path]:
    return []


def _no_checks(opset: int | None) -> None:
    pass


@dataclass(frozen=True)
class Target:
    """One export format: how its file is written, read back and judged; :meth:`export`
    runs the checked export (see the module docstring) for it.

    ``write(model, example, partial, description, opset)`` writes the file (``example`` is
    a batch to trace with) and says how; ``read_back(partial, description)`` loads it with
    the format's own runtime and returns its forward; ``sidecar(path)`` is the JSON beside
    the final file; ``partial_extras(partial)`` lists files the writer puts beside the
    partial one (deleted with it); ``prepare(opset)`` checks what the export needs before
    any work. ``exact``: the logits must match bit for bit.
    """

    format: str  # onnx | torchscript | safetensors
    what: str  # the file in messages: "ONNX", "TorchScript", "model file"
    checked_with: str  # the runtime that reads it back
    write: Callable[[nn.Module, torch.Tensor, Path, dict[str, Any], int | None], Written]
    read_back: Callable[[Path, dict[str, Any]], Logits]
    sidecar: Callable[[Path], Path] = export_sidecar
    exact: bool = False
    partial_extras: Callable[[Path], list[Path]] = _no_extras
    prepare: Callable[[int | None], None] = _no_checks
    takes_opset: bool = False  # only ONNX files have an opset

    def export(
        self,
        model: nn.Module,
        path: str | Path,
        *,
        classes: list[str],
        preprocess: Preprocess,
        source: Mapping[str, Any] | None = None,
        opset: int | None = None,
        check_batch: int = 2,
    ) -> ExportReport:
        """Write ``model`` to ``path`` with its description (architecture, ``classes``,
        ``preprocess``, ``source``), checked against the eager model on random batches of
        ``check_batch`` and one more; the caller's model keeps its device, dtype and mode."""
        path = check_output_path(path, self.format)
        if opset is not None and not self.takes_opset:
            raise ConfigError(f"--opset applies to ONNX exports only, not {self.format}")
        description = model_description(
            model, classes=classes, preprocess=preprocess.to_dict(), source=source
        )
        self.prepare(opset)
        model = _frozen_copy(model)
        example = random_batch(model, preprocess, EXPORT_BATCH)
        # The partial file keeps its suffix: some writers (a model file) insist on it.
        partial = path.with_name(f".{path.stem}.partial{path.suffix}")
        try:
            written = self.write(model, example, partial, description, opset)
            exported = self.read_back(partial, description)
            diff, sizes = compare(
                model, exported, preprocess, check_batch, exact=self.exact, what=self.what
            )
            partial.replace(path)
        finally:
            for leftover in (partial, *self.partial_extras(partial)):
                leftover.unlink(missing_ok=True)
        side = self.sidecar(path)
        write_json(side, description)
        return ExportReport(
            format=self.format,
            path=path,
            sidecar=side,
            size_bytes=path.stat().st_size,
            max_abs_diff=diff,
            batch_sizes=sizes,
            exporter=written.exporter,
            checked_with=self.checked_with,
            opset=written.opset,
            notes=written.notes,
        )


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


def compare(
    model: nn.Module,
    exported: Logits,
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
        x = random_batch(model, preprocess, n, seed=n)
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


def random_batch(model: nn.Module, pre: Preprocess, n: int, seed: int = 0) -> torch.Tensor:
    """``n`` standard-normal images (the scale of normalised inputs), from a fixed seed."""
    chans = getattr(getattr(model, "arch", None), "in_chans", 3)
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, chans, pre.image_size, pre.image_size, generator=gen)


def first_line(e: BaseException) -> str:
    """The first line of an exception's message (exporters and onnxruntime write pages)."""
    text = str(e).strip()
    return text.splitlines()[0] if text else "no message"
