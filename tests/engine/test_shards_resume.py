"""`resnext train data.name=webdataset` end to end: a run stopped in the middle of an epoch
and resumed equals the uninterrupted run bit for bit, in one process and in two (torchrun,
gloo), where only rank 0 writes and every rank resumes; and a resume that could not be
exact (other loader workers, another pack of the same images) is refused."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
import torch

from helpers import tiny_run, torchrun_standalone
from resnext.checkpoint import load_checkpoint
from resnext.cli import main
from resnext.config import DataConfig
from resnext.data.pack import pack_dataset

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("restore_torch_globals")]

# The tiny ResNeXt (helpers.tiny_run) on packed digits: 180 train images in 9 shards of 20.
TINY = tiny_run(
    "train.batch_size=16",
    "train.ema_decay=0.9",
    "train.log_every=1",
    "train.tensorboard=false",
    "train.epochs=2",
    "train.threads=1",
    "data.name=webdataset",
    "data.shuffle_buffer=50",
)


def _pack(out: Path, shard_samples: int) -> Path:
    cfg = DataConfig(test_fraction=0.8)  # digits: 180 train, 179 val (and a test not packed)
    pack_dataset(
        cfg,
        out,
        shard_samples=shard_samples,
        splits=["train", "val"],
        progress=False,
        say=lambda _: None,
    )
    return out


@pytest.fixture(scope="module")
def packed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _pack(tmp_path_factory.mktemp("pack") / "digits", 20)


def _same_run(a_dir: Path, b_dir: Path) -> None:
    """Two run folders hold bitwise the same training state and the same records."""
    a, b = load_checkpoint(a_dir / "last.pt"), load_checkpoint(b_dir / "last.pt")
    assert (a["epoch"], a["epoch_step"], a["step"]) == (b["epoch"], b["epoch_step"], b["step"])
    for part in ("model", "ema"):
        for k in a[part]:
            assert torch.equal(a[part][k], b[part][k]), f"{part}.{k} differs"
    assert a["metrics"]["train_shards"] == b["metrics"]["train_shards"]

    def records(run: Path) -> list[dict]:
        lines = (run / "metrics.jsonl").read_text().splitlines()
        drop = ("seconds", "img_per_s")
        return [{k: v for k, v in json.loads(x).items() if k not in drop} for x in lines]

    assert records(a_dir) == records(b_dir)


def _train(tmp: Path, packed: Path, name: str, *extra: str) -> int:
    return main(
        [
            "train",
            *TINY,
            f"data.root={packed}",
            f"train.output_dir={tmp}",
            f"train.run_name={name}",
            *extra,
        ]
    )


def test_one_process_stopped_mid_epoch_resumes_to_the_uninterrupted_run(
    tmp_path: Path, packed: Path, capsys
) -> None:
    assert _train(tmp_path, packed, "straight") == 0
    assert _train(tmp_path, packed, "stopped", "train.max_steps=17") == 0  # epoch 2, batch 5
    assert load_checkpoint(tmp_path / "stopped" / "last.pt")["epoch_step"] == 5
    capsys.readouterr()
    # One loader worker reads as the main process did: one stream either way (max(1, n)).
    assert _train(tmp_path, packed, "stopped", "data.num_workers=1", "--resume") == 0
    out = capsys.readouterr().out
    assert "the shard streams replay epoch 2 up to batch 5" in out
    _same_run(tmp_path / "stopped", tmp_path / "straight")
    ckpt = load_checkpoint(tmp_path / "straight" / "last.pt")
    assert ckpt["step"] == 2 * 12  # ceil(180 / 16) batches per epoch, as from the folder

    # What would not continue exactly is refused, naming the reason.
    code = main(
        [
            "train",
            "--resume",
            f"train.output_dir={tmp_path}",
            "train.run_name=stopped",
            "data.num_workers=2",
        ]
    )
    assert code == 2
    assert re.search(
        r"data.num_workers: 1 .checkpoint. vs 2 .now., refused because each loader stream",
        capsys.readouterr().err,
    )
    repacked = _pack(tmp_path / "repacked", 30)  # the same images in other shards
    code = main(
        [
            "train",
            "--resume",
            f"train.output_dir={tmp_path}",
            "train.run_name=straight",
            f"data.root={repacked}",
        ]
    )
    assert code == 2
    assert "is not the pack the checkpoint's run read" in capsys.readouterr().err


def _torchrun(tmp: Path, packed: Path, name: str, *extra: str) -> subprocess.Popen:
    cmd = torchrun_standalone(
        "-m",
        "resnext",
        "train",
        *TINY,
        f"data.root={packed}",
        f"train.output_dir={tmp}",
        f"train.run_name={name}",
        *extra,
    )
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _done(job: subprocess.Popen) -> str:
    out, _ = job.communicate(timeout=300)
    assert job.returncode == 0, out
    return out


def test_two_processes_stopped_mid_epoch_resume_to_the_uninterrupted_run(
    tmp_path: Path, packed: Path
) -> None:
    """Each process streams its own shards: ceil(ceil(180 / 2) / 16) = 6 steps per epoch for
    both; rank 0 alone prints and writes; both ranks resume from its last.pt."""
    # Two independent jobs at once (each on its own port): most of their time is start-up.
    straight_job = _torchrun(tmp_path, packed, "straight")
    stopped = _done(_torchrun(tmp_path, packed, "stopped", "train.max_steps=8"))
    straight = _done(straight_job)
    assert straight.count("epoch   2/2") == 1 and straight.count("run folder") == 2  # rank 0
    assert "stopped by train.max_steps=8" in stopped
    assert load_checkpoint(tmp_path / "stopped" / "last.pt")["epoch_step"] == 2
    resumed = _done(_torchrun(tmp_path, packed, "stopped", "--resume"))
    assert resumed.count("resuming") == 1
    _same_run(tmp_path / "stopped", tmp_path / "straight")
    ckpt = load_checkpoint(tmp_path / "straight" / "last.pt")
    assert ckpt["metrics"]["world_size"] == 2 and ckpt["step"] == 2 * 6
