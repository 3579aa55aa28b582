"""int8 settings chosen by the CPU, their checks, the gate's arithmetic, and the entropy
calibration's threshold search (no model runs)."""

from __future__ import annotations

import platform

import numpy as np
import pytest

from resnext.errors import ConfigError
from resnext.export.to_int8 import Int8Settings, choose_settings, entropy_threshold
from resnext.inference.int8 import Gate, Scores


@pytest.mark.skipif(platform.machine().lower() not in ("x86_64", "amd64"), reason="x86 rule")
def test_without_vnni_weights_take_seven_bits_and_with_it_eight() -> None:
    avx2, why = choose_settings("entropy", vnni=False)
    assert avx2 == Int8Settings(method="entropy", reduce_range=True) and "AVX2" in why
    vnni, _ = choose_settings("minmax", vnni=True)
    assert vnni == Int8Settings() and not vnni.reduce_range
    assert (avx2.format, avx2.activations, avx2.weights) == ("qdq", "u8", "s8")
    assert avx2.describe() == (
        "QDQ, u8 activations, s8 per-channel weights (7-bit), entropy calibration"
    )


def test_unknown_settings_are_refused_by_name() -> None:
    with pytest.raises(ConfigError, match="int8 method must be one of minmax, entropy"):
        Int8Settings(method="mse")
    with pytest.raises(ConfigError, match="int8 activations"):
        Int8Settings(activations="u4")


def test_the_gate_judges_top1_drop_with_labels_and_disagreement_without() -> None:
    fp32 = Scores(90.0, 99.0, 100.0)
    passed = Gate("x", 100, True, 5, fp32, Scores(89.5, 99.0, 98.0), max_drop=1.0)
    assert passed.drop_pt == pytest.approx(0.5) and passed.passed
    failed = Gate("x", 100, True, 5, fp32, Scores(88.5, 99.0, 97.0), max_drop=1.0)
    assert failed.drop_pt == pytest.approx(1.5) and not failed.passed
    record = failed.record(forced=True)
    assert record["forced"] and not record["passed"] and record["measure"] == "top-1 drop"
    # without labels: 3 of 100 answers changed -> 3 points, past a 1-point bound
    blind = Gate("x", 100, False, 5, Scores(None, None, 100.0), Scores(None, None, 97.0), 1.0)
    assert blind.drop_pt == pytest.approx(3.0) and not blind.passed
    assert blind.record(forced=False)["measure"] == "disagreement with fp32"


def test_entropy_threshold_is_onnxruntimes_search_to_the_bit() -> None:
    """The vectorized KL search picks the same window as onnxruntime's own (its Python-loop
    version, which it replaces for speed), on skewed, heavy-tailed and one-sided histograms."""
    calibrate = pytest.importorskip("onnxruntime.quantization.calibrate")
    collector = calibrate.HistogramCollector("entropy", False, 512, 64, 99.999, "same")
    rng = np.random.default_rng(0)
    for trial in range(4):
        data = np.concatenate([rng.standard_normal(4000) * (trial + 1), rng.standard_cauchy(40)])
        data = (np.maximum(data, 0) if trial % 2 else data + trial).astype(np.float32)
        edge = max(abs(data.min()), abs(data.max()))
        counts, edges = np.histogram(data, 512, range=(-edge, edge))
        histogram = (counts, edges, data.min(), data.max(), edge)
        ours = entropy_threshold(histogram, 64)
        theirs = collector.get_entropy_threshold(histogram, 64)
        assert (float(ours[0]), float(ours[1])) == (float(theirs[0]), float(theirs[1]))
        assert float(ours[1]) < data.max()  # the tail is clipped: not min-max's range
