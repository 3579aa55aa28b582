"""Fashion-MNIST as Debian installs it (`apt-get install dataset-fashion-mnist`: the official
gzipped IDX files in /usr/share/datasets/fashion-mnist/) and its recipe,
configs/fashion_mnist_resnext29.yaml."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from helpers import REPO, tiny_run
from resnext.cli import main
from resnext.config import load_config
from resnext.data import DataError, build_raw_splits
from resnext.data import mnist as mnist_module
from resnext.data.mnist import FASHION_MNIST_CLASSES, SYSTEM_ROOTS

RECIPE = REPO / "configs" / "fashion_mnist_resnext29.yaml"
DEBIAN = Path("/usr/share/datasets/fashion-mnist")
FILES = [
    f"{split}-{kind}-idx{dims}-ubyte.gz"
    for split in ("train", "t10k")
    for kind, dims in (("images", 3), ("labels", 1))
]
installed = pytest.mark.skipif(
    not all((DEBIAN / f).is_file() for f in FILES),
    reason="Debian's dataset-fashion-mnist is not installed (apt-get install -y "
    "dataset-fashion-mnist; .ci/run installs it)",
)


def test_recipe_reads_the_debian_location() -> None:
    cfg = load_config(RECIPE)
    assert cfg.data.name == "fashion_mnist" and cfg.data.root == str(DEBIAN)
    assert SYSTEM_ROOTS["fashion_mnist"] == str(DEBIAN)  # the fallback when data.root is unset
    assert (cfg.data.image_size, cfg.data.augment) == (28, "cifar")
    assert cfg.model.name.startswith("resnext29_")
    # the schedule the recipe states: 54k train images, batch 128 -> 422 steps an epoch
    assert cfg.train.batch_size == cfg.optim.lr_base_batch == 128
    assert (cfg.train.epochs, cfg.schedule.name) == (30, "cosine")


def test_missing_package_is_named(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setitem(SYSTEM_ROOTS, "fashion_mnist", str(tmp_path / "absent"))
    with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist"):
        mnist_module.mnist_splits("fashion_mnist", None, 0.1, 0)


@installed
def test_debian_files_are_the_official_splits() -> None:
    s = build_raw_splits(load_config(RECIPE).data)
    assert (len(s.train), len(s.val), len(s.test)) == (54_000, 6_000, 10_000)
    assert s.classes == FASHION_MNIST_CLASSES and s.info["source"] == str(DEBIAN)
    image, label = s.test[0]
    assert tuple(image.shape) == (3, 28, 28) and label == 9  # the test set opens with a boot
    # data.root unset: the reader looks where the package installs the files
    unset = build_raw_splits(load_config(RECIPE, ["data.root=null"]).data)
    assert unset.info["source"] == str(DEBIAN) and len(unset.test) == 10_000


@pytest.mark.slow
@installed
def test_recipe_learns_fashion_mnist_in_a_few_hundred_steps(tmp_path: Path) -> None:
    """The recipe's data path (Debian's files, pad-crop-flip, 2 workers) with a small model,
    300 steps of 64 images at a constant lr 0.1, then the official 10k test images scored
    (the run tests last.pt when train.max_steps stops it). Chance is 10%."""
    argv = [
        "train",
        str(RECIPE),
        *tiny_run("model.name=resnext29_4x4d"),  # small: C=4, narrow stages (70k params)
        "train.batch_size=64",
        "optim.lr_base_batch=64",  # lr 0.1 at this batch, as the recipe's at 128
        "train.max_steps=300",  # 19,200 images: a third of the first epoch
        "schedule.name=constant",  # the full lr from the first step: no warm-up, no decay
        "schedule.warmup_epochs=0",
        "train.ema_decay=0.95",  # weights averaged over ~20 steps: steadier than the last step
        "train.tensorboard=false",
        f"train.output_dir={tmp_path}",
    ]
    assert main(argv) == 0
    run = tmp_path / "fashion_mnist_resnext29"
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["kind"] == "stop"] == [300]
    (test,) = [r for r in records if r["kind"] == "test"]
    assert test["checkpoint"] == "last.pt" and test["test_images"] == 10_000
    assert test["test_top1"] > 70.0, test
