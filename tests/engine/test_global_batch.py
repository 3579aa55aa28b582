"""Multi-process settings: train.global_batch_size (the per-process batch derived from it,
clear errors where it cannot be), what a run prints about its batch and lr, and
train.sync_bn (the conversion, and the refusal where SyncBatchNorm cannot run)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from helpers import TINY, tiny_run
from resnext.cli import main
from resnext.config import ConfigError, load_config, resolve_batch_size
from resnext.engine.distributed import DistInfo
from resnext.engine.sync_bn import check_sync_bn, convert_sync_batchnorm, to_sync_batchnorm
from resnext.models import create_model

pytestmark = pytest.mark.usefixtures("restore_torch_globals")


def _cfg(*overrides: str):
    return load_config(None, list(overrides))


@pytest.mark.parametrize(
    ("world", "accum", "per"), [(1, 1, 256), (8, 1, 32), (4, 2, 32), (2, 4, 32), (16, 16, 1)]
)
def test_global_batch_derives_the_per_process_batch(world: int, accum: int, per: int) -> None:
    cfg = resolve_batch_size(
        _cfg("train.global_batch_size=256", f"train.accumulate_steps={accum}"), world
    )
    assert cfg.train.batch_size == per
    assert cfg.train.batch_size * accum * world == 256
    assert cfg.train.global_batch_size == 256  # kept: the stored config says what was asked


def test_without_a_global_batch_the_config_is_unchanged() -> None:
    cfg = _cfg("train.batch_size=48")
    assert resolve_batch_size(cfg, 8) is cfg


def test_a_global_batch_that_does_not_divide_is_an_error() -> None:
    cfg = _cfg("train.global_batch_size=250", "train.accumulate_steps=2")
    with pytest.raises(ConfigError, match=r"4 process\(es\) x 2 accumulation step\(s\) = 8") as e:
        resolve_batch_size(cfg, 4)
    assert "248 or 256" in str(e.value)
    with pytest.raises(
        ConfigError, match=r"multiple of 8 \(e\.g\. 8\)"
    ):  # fewer images than batches
        resolve_batch_size(_cfg("train.global_batch_size=6"), 8)


def test_batch_size_and_global_batch_must_agree() -> None:
    agreeing = _cfg("train.global_batch_size=256", "train.batch_size=64")
    assert resolve_batch_size(agreeing, 4).train.batch_size == 64
    with pytest.raises(ConfigError, match=r"disagree: 256 images over 8 process\(es\)"):
        resolve_batch_size(agreeing, 8)  # e.g. a run resumed on another number of GPUs


def test_a_global_batch_below_one_is_refused_when_read() -> None:
    with pytest.raises(ConfigError, match="global_batch_size must be at least 1"):
        _cfg("train.global_batch_size=0")


def test_a_run_prints_its_global_batch_and_scaled_lr(tmp_path: Path, capsys) -> None:
    code = main(
        [
            "train",
            *tiny_run(),
            "data.test_fraction=0",  # one step, no final test: quick
            "train.global_batch_size=32",
            "train.accumulate_steps=2",
            "optim.lr_base_batch=256",
            "train.max_steps=1",
            f"train.output_dir={tmp_path}",
            "train.run_name=g",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0, out
    assert "1 process(es) x batch 16 x 2 accumulation = global batch 32" in out
    assert "lr 0.0125 (optim.lr 0.1 x 32/256)" in out
    stored = load_config(tmp_path / "g" / "config.yaml")
    assert (stored.train.batch_size, stored.train.global_batch_size) == (16, 32)


# -- SyncBatchNorm ------------------------------------------------------------------------
def _bn_count(model: nn.Module, kind: type) -> int:
    return sum(type(m) is kind for m in model.modules())


def test_sync_bn_conversion_keeps_every_weight_and_key() -> None:
    model = create_model("resnext29_2x4d", num_classes=10, **TINY).eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):  # non-trivial statistics to carry over
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.5, 2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    n_bn = _bn_count(model, nn.BatchNorm2d)
    x = torch.randn(2, 3, 32, 32)
    expected = model(x)
    converted = to_sync_batchnorm(model)
    assert converted is model and model.arch is not None  # converted in place, arch kept
    assert n_bn > 0 and _bn_count(model, nn.SyncBatchNorm) == n_bn
    assert _bn_count(model, nn.BatchNorm2d) == 0
    after = model.state_dict()
    assert list(after) == list(before)  # checkpoints stay loadable either way
    for k, v in before.items():
        assert torch.equal(after[k], v), k
    assert torch.equal(model(x), expected)  # eval mode: running statistics, no collective


def test_sync_bn_is_refused_off_cuda_and_a_no_op_for_one_process() -> None:
    with pytest.raises(ConfigError, match=r"train\.sync_bn needs CUDA"):
        check_sync_bn(torch.device("cpu"), DistInfo(rank=0, world_size=2))
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4))
    with pytest.raises(ConfigError, match=r"train\.sync_bn needs CUDA"):
        convert_sync_batchnorm(model, torch.device("cpu"), DistInfo())
    note = check_sync_bn(torch.device("cuda", 0), DistInfo())
    assert note is not None and "one process" in note
    assert convert_sync_batchnorm(model, torch.device("cuda", 0), DistInfo()) is model
    assert _bn_count(model, nn.BatchNorm2d) == 1


def test_train_with_sync_bn_on_the_cpu_fails_before_any_work(tmp_path: Path, capsys) -> None:
    code = main(["train", "train.sync_bn=true", "train.device=cpu", f"train.output_dir={tmp_path}"])
    assert code == 2
    assert "train.sync_bn needs CUDA" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())  # no run folder
