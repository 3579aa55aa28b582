"""resnext bench: one run prints every path the device supports, with the reference row."""

from __future__ import annotations

import re

import pytest

from resnext.bench import BenchRow, precisions
from resnext.cli import main
from resnext.commands.bench import table


def test_bench_prints_each_path_with_its_ratio_to_the_reference(capsys) -> None:
    pytest.importorskip("onnxruntime")
    argv = ["bench", "--models", "resnext29_2x4d", "--batch", "2", "--repeat", "1"]
    assert main([*argv, "--no-train", "--no-compile"]) == 0
    out = capsys.readouterr().out
    assert (
        out.startswith("device cpu: ")
        and "dense ceiling (best of a matmul and a 1x1 convolution): fp32 " in out
    )
    rows = [line.split() for line in out.splitlines() if line.startswith("resnext29_2x4d ")]
    paths = [" ".join(r[1:-6]) + " " + r[-6] for r in rows]
    expected = ["ours plain nchw fp32"]  # no torchvision model of this name: ours is the ref
    expected += [
        f"ours eager (BN folded, channels_last) {p}"
        for p in precisions(__import__("torch").device("cpu"))
    ]
    expected += ["ours onnxruntime fp32", "ours onnxruntime int8 int8"]
    assert paths == expected
    assert rows[0][-4] == "1.00x" and all(float(r[-5]) > 0 for r in rows)


def test_the_table_compares_with_the_reference_and_the_ceiling() -> None:
    rows = [
        BenchRow("m", "torchvision eager nchw", "fp32", 8, 10.0, 1e9, 500.0, reference=True),
        BenchRow("m", "ours eager channels_last", "bf16", 8, 25.0, 1e9, None),
    ]
    rows += [
        BenchRow("m", "torchvision train step", "fp32", 8, 2.0, 3e9, None, True, "train", 1.5),
        BenchRow("m", "ours train step", "fp32", 8, 3.0, 3e9, None, kind="train"),
    ]
    lines = table(rows, {"fp32": 100e9, "bf16": 250e9})
    assert lines[1][4:] == ("1.00x", "10%", "500", "-")
    assert lines[2][4:] == ("2.50x", "10%", "-", "-")  # 25 GFLOP/s of a 250 GFLOP/s ceiling
    assert lines[3][4:] == ("1.00x", "6%", "-", "1.5")  # training rows: their own reference
    assert lines[4][4] == "1.50x"


def test_bad_arguments_are_one_line_errors(capsys) -> None:
    assert main(["bench", "--models", "resnext7_1x1d"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("resnext bench: error:") and err.count("\n") == 1
    assert main(["bench", "--batch", "0"]) == 2
    assert re.search(r"--batch and --repeat must be at least 1", capsys.readouterr().err)


def test_int8_rows_are_not_measured_against_a_ceiling() -> None:
    rows = [
        BenchRow("m", "ours onnxruntime", "fp32", 8, 10.0, 1e9, None, reference=True),
        BenchRow("m", "ours onnxruntime int8", "int8", 8, 15.0, 1e9, None),
    ]
    lines = table(rows, {"fp32": 100e9})
    assert lines[2][4:6] == ("1.50x", "-")
