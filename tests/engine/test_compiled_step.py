"""``train.compile``: the training step compiled by torch.compile reports its warm-up and
trains the same model as eager within float rounding."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from helpers import tiny_run
from resnext.checkpoint import load_checkpoint
from resnext.cli import main

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("restore_torch_globals")]

TINY = tiny_run("data.test_fraction=0.8", "train.batch_size=16", "train.max_steps=3")


def test_compiled_step_reports_warmup_and_trains_like_eager(tmp_path: Path, capsys) -> None:
    weights = {}
    for compiled in (False, True):
        name = f"c{int(compiled)}"
        # fp32: bf16 (auto on CPUs with native bf16) rounds differently in the two paths
        argv = ["train", *TINY, "train.precision=fp32", f"train.compile={str(compiled).lower()}"]
        assert main([*argv, f"train.output_dir={tmp_path}", f"train.run_name={name}"]) == 0
        out = capsys.readouterr()
        said = "compiled and run in" in out.out + out.err
        assert said == compiled
        weights[compiled] = load_checkpoint(tmp_path / name / "last.pt")["model"]
    for key, value in weights[False].items():
        if value.is_floating_point():
            torch.testing.assert_close(weights[True][key], value, rtol=1e-3, atol=1e-4)
