"""The paper's CIFAR and ImageNet recipes (configs/*.yaml) train a few steps on real files.

Tiny model overrides keep it fast; the data path (readers, transforms, loaders with
workers, bad-file policy) is exactly the recipe's.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from helpers import (
    CIFAR10_NAMES,
    REPO,
    make_truncated_jpeg,
    tar_gz,
    tiny_run,
    write_cifar10,
    write_image_tree,
)
from resnext.cli import main

TINY = tiny_run("model.stem_width=8", "train.device=cpu", "train.log_every=1")


@pytest.mark.slow
def test_cifar10_recipe_trains_on_the_distributed_archive(tmp_path: Path) -> None:
    archive = tar_gz(write_cifar10(tmp_path / "src"), tmp_path / "cifar-10-python.tar.gz")
    code = main(
        [
            "train",
            str(REPO / "configs" / "cifar10_resnext29_8x64d.yaml"),
            f"data.root={archive}",
            *TINY,
            "train.batch_size=8",
            "train.max_steps=2",
            "data.num_workers=2",
            f"train.output_dir={tmp_path / 'runs'}",
        ]
    )
    assert code == 0
    ckpt = torch.load(tmp_path / "runs" / "cifar10_resnext29_8x64d" / "last.pt", weights_only=True)
    assert ckpt["classes"] == CIFAR10_NAMES and ckpt["step"] == 2


@pytest.mark.slow
def test_imagenet_recipe_trains_on_an_image_folder_with_bad_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    classes = ["n01440764", "n01443537", "n01484850"]
    write_image_tree(tmp_path / "data" / "train", classes, 6)
    write_image_tree(tmp_path / "data" / "val", classes, 1, seed=500)
    make_truncated_jpeg(tmp_path / "data" / "train" / classes[0] / "broken.jpg")
    args = [
        "train",
        str(REPO / "configs" / "imagenet_resnext50_32x4d.yaml"),
        f"data.root={tmp_path / 'data'}",
        *TINY,
        "data.val_fraction=0.2",
        "data.num_workers=2",
        "model.name=resnext26_2x4d",
        "model.widths=[16,32,64,128]",
        "train.batch_size=4",
        "train.epochs=1",  # a whole epoch, so every file (the broken one too) is read
        f"train.output_dir={tmp_path / 'runs'}",
    ]
    # error policy (the recipe's): stops with the file and the reason, exit code 2, no traceback
    assert main([*args, "train.run_name=strict"]) == 2
    message = capsys.readouterr().err
    assert "broken.jpg" in message and "truncated" in message
    assert "Traceback" not in message and "worker process" in message
    # skip policy: trains, reports the skipped file at the end of the epoch, names the classes
    assert main([*args, "train.run_name=lenient", "data.on_bad_file=skip"]) == 0
    out = capsys.readouterr()
    assert "skipped 1 unreadable file(s)" in out.out + out.err and "broken.jpg" in out.out + out.err
    metrics = (tmp_path / "runs" / "lenient" / "metrics.jsonl").read_text().splitlines()
    assert '"skipped_files": 1' in [ln for ln in metrics if '"kind": "epoch"' in ln][-1]
    ckpt = torch.load(tmp_path / "runs" / "lenient" / "last.pt", weights_only=True)
    assert ckpt["classes"] == classes and ckpt["epoch"] == 1
    assert ckpt["preprocess"]["eval_resize"] == 256
