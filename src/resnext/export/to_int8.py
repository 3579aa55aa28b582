"""int8 ONNX: an fp32 export (:func:`~resnext.export.to_onnx.export_onnx`) quantized by
onnxruntime's static quantizer (``quant_pre_process`` then ``quantize_static``), with
per-channel int8 weights and activation ranges calibrated on real images.

The settings default by the CPU at hand (:func:`choose_settings`), as onnxruntime's
quantization guide advises: QDQ with u8 activations and s8 weights everywhere; on an x86 CPU
without VNNI, whose AVX2 u8 x s8 multiply-add (``vpmaddubsw``) adds pairs into a saturating
int16, the weights use 7 bits (``reduce_range``) so those pairs cannot overflow. Which
settings were used, how the file was calibrated and what the accuracy gate measured go into
its metadata (``resnext.int8``) and sidecar, beside the fp32 export's description.
"""

from __future__ import annotations

import json
import platform
import tempfile
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..checkpoint.writing import write_json
from ..errors import ConfigError, WeightsError
from ..runtime import cpu_has_vnni
from .checked import export_sidecar, first_line
from .onnx_runtime import INPUT_NAME, onnx_metadata, require

#: The ONNX metadata key (a JSON string) that marks a file as int8 and says how it was made.
INT8_KEY = "resnext.int8"
METHODS = ("minmax", "entropy", "percentile")
FORMATS = ("qdq", "qoperator")
TYPES = ("u8", "s8")


@dataclass(frozen=True)
class Int8Settings:
    """How the model is quantized (onnxruntime.quantization's choices, by name)."""

    format: str = "qdq"  # qdq (QuantizeLinear/DequantizeLinear pairs) | qoperator (QLinearConv)
    activations: str = "u8"  # u8 | s8
    weights: str = "s8"  # s8 | u8 (per-channel either way)
    reduce_range: bool = False  # 7-bit weights: no int16 saturation on AVX2 without VNNI
    method: str = "minmax"  # calibration: minmax | entropy | percentile
    # Operator types to quantize; () = every one onnxruntime quantizes (Conv, Add, pooling,
    # Gemm...). ("Conv",) leaves the residual Adds, pooling and the classifier in fp32.
    ops: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for name, value, allowed in (
            ("format", self.format, FORMATS),
            ("activations", self.activations, TYPES),
            ("weights", self.weights, TYPES),
            ("method", self.method, METHODS),
        ):
            if value not in allowed:
                raise ConfigError(f"int8 {name} must be one of {', '.join(allowed)}, not {value!r}")

    def describe(self) -> str:
        """e.g. ``QDQ, u8 activations, s8 per-channel weights (7-bit), minmax calibration``."""
        bits = " (7-bit)" if self.reduce_range else ""
        ops = f", only {'/'.join(self.ops)} quantized" if self.ops else ""
        return (
            f"{self.format.upper() if self.format == 'qdq' else 'QOperator'}, "
            f"{self.activations} activations, {self.weights} per-channel weights{bits}, "
            f"{self.method} calibration{ops}"
        )


def choose_settings(method: str = "minmax", vnni: bool | None = None) -> tuple[Int8Settings, str]:
    """The settings for this CPU, and why (``vnni``: override the CPU's answer, for tests).

    QDQ, u8 activations, s8 per-channel weights on every CPU (onnxruntime's CPU kernels run
    QDQ by fusing it into QLinearConv); without VNNI the weights take 7 bits, which
    onnxruntime advises for AVX2 and non-VNNI AVX-512, where u8 x s8 products are summed in
    pairs into a saturating int16.
    """
    vnni = cpu_has_vnni() if vnni is None else vnni
    if vnni or platform.machine().lower() not in ("x86_64", "amd64", "i386", "i686"):
        why = "this CPU has an int8 dot product (VNNI) or is not x86: 8-bit weights"
        return Int8Settings(method=method), why
    why = "x86 without VNNI (AVX2): 7-bit weights, so u8 x s8 pair sums cannot saturate int16"
    return Int8Settings(method=method, reduce_range=True), why


class _Batches:
    """onnxruntime's ``CalibrationDataReader``: one ``{"images": batch}`` at a time."""

    def __init__(self, batches: Iterable[np.ndarray]) -> None:
        self._it: Iterator[np.ndarray] = iter(batches)

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._it, None)
        return None if batch is None else {INPUT_NAME: np.ascontiguousarray(batch, np.float32)}


def quantize_file(
    fp32: str | Path, out: str | Path, batches: Iterable[np.ndarray], settings: Int8Settings
) -> float:
    """Quantize the fp32 ONNX file ``fp32`` into ``out`` (no metadata of ours yet),
    calibrating on ``batches`` (preprocessed float32 ``(N, C, S, S)`` arrays); the seconds
    it took."""
    require("onnx")
    require("onnxruntime")
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quant_pre_process,
        quantize_static,
    )

    qtype = {"u8": QuantType.QUInt8, "s8": QuantType.QInt8}
    method = {
        "minmax": CalibrationMethod.MinMax,
        "entropy": CalibrationMethod.Entropy,
        "percentile": CalibrationMethod.Percentile,
    }[settings.method]
    if settings.method != "minmax":
        # The histogram calibrators stack every batch's outputs into one array, which fails
        # on a last batch of another size ("inhomogeneous shape"): feed one image at a time.
        batches = (image[None] for batch in batches for image in batch)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="resnext-int8-") as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        reader: _Batches | None = _Batches(batches)
        cache: Path | None = None
        try:
            # BN folded into the convolutions and shapes inferred, so that each Conv gets one
            # per-channel scale and the quantizer sees every tensor's rank.
            quant_pre_process(str(fp32), str(prepared))
            if settings.method == "entropy":
                cache, reader = _entropy_ranges(prepared, reader, settings.ops, Path(tmp)), None
            quantize_static(
                str(prepared),
                str(out),
                reader,
                quant_format=QuantFormat.QDQ if settings.format == "qdq" else QuantFormat.QOperator,
                op_types_to_quantize=list(settings.ops) or None,
                per_channel=True,
                reduce_range=settings.reduce_range,
                activation_type=qtype[settings.activations],
                weight_type=qtype[settings.weights],
                calibrate_method=method,
                calibration_cache_path=cache,
            )
        except (ValueError, RuntimeError) as e:  # onnxruntime's own for a graph it cannot do
            Path(out).unlink(missing_ok=True)
            raise WeightsError(f"onnxruntime could not quantize the model: {first_line(e)}") from e
    return time.perf_counter() - start


#: The entropy calibration's histogram: 2048 bins searched for the 128-bin quantization with the
#: least KL divergence (TensorRT's calibration, Migacz 2017).
ENTROPY_BINS, ENTROPY_QUANTIZED_BINS = 2048, 128


def _entropy_ranges(prepared: Path, reader: Any, ops: tuple[str, ...], tmp: Path) -> Path:
    """Calibrate ``prepared`` by entropy with :data:`ENTROPY_BINS` histogram bins; the
    calibration cache (tensor ranges) that ``quantize_static`` then reads.

    ``quantize_static`` builds its own entropy calibrator with 128 bins and 128 quantized bins
    and passes no bin counts on. Its KL search then has one candidate, the histogram's whole
    range: the ranges of min-max (measured on the tiny test model: 40 of 42 activation scales
    equal to min-max's, the other 2 wider). So the calibrator is built and run here, with
    onnxruntime's threshold search replaced by :func:`entropy_threshold` (the same search,
    vectorized: onnxruntime's sums bins in Python, 165 s for the tiny model at 2048 bins)."""
    from onnxruntime.quantization.calibrate import (
        CalibrationMethod,
        create_calibrator,
        save_tensors_data,
    )

    calibrator = create_calibrator(
        prepared,
        list(ops) or None,
        augmented_model_path=str(tmp / "augmented.onnx"),
        calibrate_method=CalibrationMethod.Entropy,
        extra_options={"num_bins": ENTROPY_BINS, "num_quantized_bins": ENTROPY_QUANTIZED_BINS},
    )
    calibrator.collect_data(reader)
    if hasattr(calibrator.collector, "get_entropy_threshold"):  # else onnxruntime's own, slower
        calibrator.collector.get_entropy_threshold = entropy_threshold
    cache = tmp / "ranges.json"
    save_tensors_data(calibrator.compute_data(), cache)
    return cache


def entropy_threshold(histogram: tuple[Any, ...], num_quantized_bins: int) -> tuple[Any, Any]:
    """onnxruntime's ``HistogramCollector.get_entropy_threshold``, the same arithmetic with
    its bin sums vectorized: for each symmetric window around the histogram's zero bin, the
    KL divergence between the window (outliers folded into its end bins) and its quantization
    into ``num_quantized_bins`` bins; the window with the least, clipped to the data's range.
    ``histogram``: (counts, edges, min, max, ...) as the collector holds it."""
    from onnxruntime.quantization.calibrate import entropy
    from onnxruntime.quantization.quant_utils import smooth_distribution

    hist, edges = histogram[0], histogram[1]
    num_bins = hist.size
    zero, half = num_bins // 2, num_quantized_bins // 2
    below, above = np.concatenate(([0], np.cumsum(hist))), int(hist.sum())
    windows, divs = [], np.zeros(zero - half + 1, dtype=edges.dtype)
    for i in range(half, zero + 1):
        start, end = zero - i, min(zero + i + 1, num_bins)
        sliced = hist[start:end]
        p = sliced.copy()
        p[0] += below[start]  # the outliers left of the window
        p[-1] += above - below[end]  # ... and right of it
        merged = sliced.size // num_quantized_bins
        whole = num_quantized_bins * merged
        quantized = np.add.reduceat(sliced[:whole], np.arange(0, whole, merged))
        quantized[-1] += sliced[whole:].sum()
        norm = np.add.reduceat((p[:whole] != 0).astype(np.int64), np.arange(0, whole, merged))
        spread = np.where(norm != 0, quantized / np.maximum(norm, 1), 0).astype(np.int64)
        q = np.zeros(p.size, dtype=np.int64)
        q[:whole] = np.repeat(spread, merged)
        ps, qs = smooth_distribution(p), smooth_distribution(q)
        divs[i - half] = np.inf if ps is None or qs is None else entropy(ps, qs)
        windows.append((edges[start], edges[end]))
    best = windows[int(np.argmin(divs))]
    low = max(best[0], histogram[2])
    high = min(best[1], histogram[3])
    return np.asarray(low, dtype=edges.dtype), np.asarray(high, dtype=edges.dtype)


def finish_int8(
    quantized: str | Path, out: str | Path, description: Mapping[str, Any], int8: Mapping[str, Any]
) -> Path:
    """Write ``quantized`` to ``out`` with our description (architecture, classes,
    preprocessing, source) and ``int8`` (settings, calibration, gate figures) in its metadata,
    and both in the JSON beside it; returns the sidecar's path."""
    onnx = require("onnx")
    proto = onnx.load(str(quantized))
    entries = {**onnx_metadata(description), INT8_KEY: json.dumps(dict(int8))}
    kept = [p for p in proto.metadata_props if p.key not in entries]
    del proto.metadata_props[:]
    proto.metadata_props.extend(kept)
    for key, value in entries.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    out = Path(out)
    partial = out.with_name(f".{out.stem}.partial{out.suffix}")
    try:
        onnx.save(proto, str(partial))
        partial.replace(out)
    finally:
        partial.unlink(missing_ok=True)
    side = export_sidecar(out)
    write_json(side, {**dict(description), "int8": dict(int8)})
    return side


def settings_record(settings: Int8Settings, why: str) -> dict[str, Any]:
    """The settings as stored in the metadata (with why they were chosen)."""
    record = asdict(settings)
    record["ops"] = list(settings.ops) or "all onnxruntime quantizes"
    record["per_channel_weights"] = True
    record["why"] = why
    record["quantizer"] = f"onnxruntime {require('onnxruntime').__version__} quantize_static"
    return record
