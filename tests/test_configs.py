"""The recipes in configs/: each loads and validates, says what every line means, and
holds the paper's numbers (PAPER.md "Training recipes"); demo.yaml is the defaults."""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path

import pytest

from resnext.config import Config, load_config
from resnext.models import parse_name

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
IMAGENET = ["imagenet_resnext50_32x4d", "imagenet_resnext101_32x4d", "imagenet_resnext101_64x4d"]
CIFAR = [
    "cifar10_resnext29_8x64d",
    "cifar10_resnext29_16x64d",
    "cifar100_resnext29_8x64d",
    "cifar100_resnext29_16x64d",
]
ALL = ["demo", *IMAGENET, *CIFAR]


def test_every_recipe_is_there() -> None:
    assert sorted(p.stem for p in CONFIGS.glob("*.yaml")) == sorted(ALL)


@pytest.mark.parametrize("name", ALL)
def test_loads_validates_and_comments_every_line(name: str) -> None:
    path = CONFIGS / f"{name}.yaml"
    cfg = load_config(path)
    parse_name(cfg.model.name)  # a model the registry knows
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            assert "#" in line, f"{path.name}:{n} has no comment: {line!r}"
    # The sections this recipe must pin are spelled out in full, so no demo default
    # (a narrow model, an EMA, label smoothing...) leaks into a paper recipe.
    text = path.read_text()
    for section in ("model", "optim", "schedule", "train"):
        for f in dataclasses.fields(typing.get_type_hints(Config)[section]):
            assert f"\n  {f.name}:" in text, f"{path.name} does not spell {section}.{f.name}"


def test_demo_yaml_is_the_defaults() -> None:
    """`resnext train` with no arguments and `resnext train configs/demo.yaml` are one run."""
    assert load_config(CONFIGS / "demo.yaml") == Config()


@pytest.mark.parametrize("name", IMAGENET)
def test_imagenet_recipe_is_the_papers(name: str) -> None:
    cfg = load_config(CONFIGS / f"{name}.yaml")
    assert cfg.model.name == name.removeprefix("imagenet_")
    assert (cfg.model.stem_width, cfg.model.widths, cfg.model.zero_init_last_bn) == (
        64,
        None,
        False,
    )
    assert cfg.data.name == "imagefolder" and cfg.data.root == "/path/to/imagenet"
    assert (cfg.data.image_size, cfg.data.eval_resize, cfg.data.augment) == (224, 256, "imagenet")
    o = cfg.optim
    assert (o.lr, o.lr_base_batch, o.momentum, o.nesterov, o.weight_decay) == (
        0.1,
        256,
        0.9,
        False,
        1e-4,
    )
    s = cfg.schedule
    assert (s.name, s.step_size, s.gamma, s.warmup_epochs) == ("step", 30, 0.1, 0.0)
    assert cfg.train.epochs == 100
    # 8 processes x 32 = the paper's 256, so the scaled lr is exactly 0.1.
    assert cfg.train.batch_size * 8 * cfg.train.accumulate_steps == 256
    assert (cfg.train.label_smoothing, cfg.train.ema_decay) == (0.0, None)
    # The official val images are the test split; selection uses a slice of train.
    assert cfg.data.test_dir == "val" and cfg.data.val_dir is None and cfg.data.val_fraction > 0


@pytest.mark.parametrize("name", CIFAR)
def test_cifar_recipe_is_the_papers(name: str) -> None:
    cfg = load_config(CONFIGS / f"{name}.yaml")
    dataset, model = name.split("_", 1)
    assert cfg.data.name == dataset and cfg.model.name == model
    assert (cfg.model.stem_width, cfg.model.widths, cfg.model.zero_init_last_bn) == (
        64,
        None,
        False,
    )
    assert (cfg.data.image_size, cfg.data.augment) == (32, "cifar")
    o = cfg.optim
    assert (o.lr, o.lr_base_batch, o.momentum, o.nesterov, o.weight_decay) == (
        0.1,
        128,
        0.9,
        True,
        5e-4,
    )
    s = cfg.schedule
    assert (s.name, s.milestones, s.gamma, s.warmup_epochs) == ("multistep", (150, 225), 0.1, 0.0)
    assert (cfg.train.epochs, cfg.train.batch_size) == (300, 128)
    assert (cfg.train.label_smoothing, cfg.train.ema_decay) == (0.0, None)
