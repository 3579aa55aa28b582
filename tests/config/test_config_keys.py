"""The config loader: typed, frozen, validated; errors name the key and the nearest valid one."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from helpers import REPO
from resnext.config import Config, ConfigError, from_dict, load_config


def test_defaults_and_overrides() -> None:
    cfg = load_config(
        overrides=[
            "train.epochs=3",
            "optim.lr=0.05",
            "model.widths=[8,16,32]",
            "train.clip_grad_norm=null",
        ]
    )
    assert cfg.train.epochs == 3 and cfg.optim.lr == 0.05
    assert cfg.model.widths == (8, 16, 32) and cfg.train.clip_grad_norm is None
    # YAML 1.1 reads 1e-4 without a dot as a string; it is still the number it spells.
    assert load_config(overrides=["optim.weight_decay=1e-4"]).optim.weight_decay == 1e-4
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.train.epochs = 4  # type: ignore[misc]


def test_yaml_then_overrides(tmp_path: Path) -> None:
    (tmp_path / "c.yaml").write_text("train:\n  epochs: 7\n  batch_size: 32\n")
    cfg = load_config(tmp_path / "c.yaml", ["train.batch_size=16"])
    assert (cfg.train.epochs, cfg.train.batch_size) == (7, 16)


def test_roundtrip_through_dict() -> None:
    cfg = load_config(overrides=["model.widths=[8,16,32]", "schedule.milestones=[3,6]"])
    assert from_dict(cfg.to_dict()) == cfg
    assert from_dict(Config().to_dict()) == Config()


@pytest.mark.parametrize(
    "override,match",
    [
        ("train.epoch=3", r"unknown config key 'train.epoch'; did you mean 'train.epochs'\?"),
        ("trian.epochs=3", r"unknown config key 'trian'; did you mean 'train'\?"),
        ("train.epochs=three", r"train.epochs must be an integer, got 'three'"),
        ("train.epochs=2.5", r"train.epochs must be an integer"),
        ("optim.nesterov=maybe", r"optim.nesterov must be true or false"),
        ("optim.lr=-1", r"optim.lr must be positive"),
        ("data.on_bad_file=ignore", r"data.on_bad_file must be one of error, skip"),
        ("train.ema_decay=1.5", r"train.ema_decay must be in \(0, 1\)"),
        ("train.epochs", r"must look like section.key=value"),
        ("epochs=3", r"must be section.key"),
    ],
)
def test_bad_overrides_are_named(override: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        load_config(overrides=[override])


def test_bad_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    (tmp_path / "bad.yaml").write_text("train: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(tmp_path / "bad.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        load_config(tmp_path / "list.yaml")
    (tmp_path / "sec.yaml").write_text("train: 3\n")
    with pytest.raises(ConfigError, match="train must be a mapping"):
        load_config(tmp_path / "sec.yaml")


def test_every_field_has_a_comment() -> None:
    """The config file is the documentation: each field carries a comment (same line or above)."""
    lines = (REPO / "src" / "resnext" / "config.py").read_text().splitlines()
    for section in dataclasses.fields(Config):
        cls = type(getattr(Config(), section.name))
        start = next(i for i, ln in enumerate(lines) if ln.startswith(f"class {cls.__name__}:"))
        for f in dataclasses.fields(cls):
            i = next(
                i for i in range(start, len(lines)) if lines[i].strip().startswith(f"{f.name}:")
            )
            assert "#" in lines[i] or lines[i - 1].strip().startswith("#"), (
                f"{cls.__name__}.{f.name}"
            )


def test_the_config_choices_are_the_registries_names() -> None:
    """config.CHOICES takes the reader, augmentation, filter, optimizer and schedule names
    from registry_names, and each registry answers to exactly those: a name added to (or
    dropped from) one side only fails here."""
    import torch

    from resnext import registry_names
    from resnext.config import CHOICES, OptimConfig, ScheduleConfig
    from resnext.data.build import READERS
    from resnext.data.transforms import INTERPOLATIONS, train_transform
    from resnext.engine.optim import build_optimizer, lr_factor_fn

    assert CHOICES["data.name"] == registry_names.READERS
    assert CHOICES["data.augment"] == registry_names.AUGMENTATIONS
    assert CHOICES["data.interpolation"] == registry_names.INTERPOLATIONS
    assert CHOICES["optim.name"] == registry_names.OPTIMIZERS
    assert CHOICES["schedule.name"] == registry_names.SCHEDULES
    assert sorted(READERS) == sorted(registry_names.READERS)
    assert sorted(INTERPOLATIONS) == sorted(registry_names.INTERPOLATIONS)
    for augment in registry_names.AUGMENTATIONS:
        train_transform(augment, 32, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    with pytest.raises(ValueError, match=r"data\.augment must be one of none, crop"):
        train_transform("mixup", 32, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    for name in registry_names.SCHEDULES:
        factor = lr_factor_fn(ScheduleConfig(name=name, milestones=(1,)), 10, 30, 0.1)
        assert all(0.0 <= factor(step) <= 1.0 for step in range(30))
    for name in registry_names.OPTIMIZERS:
        build_optimizer(torch.nn.Linear(2, 2), OptimConfig(name=name), 0.1)
    with pytest.raises(ConfigError, match=r"schedule\.name must be one of step, multistep"):
        load_config(overrides=["schedule.name=linear"])


def test_importing_the_config_imports_no_registry() -> None:
    """The choices come from a light module: ``import resnext.config`` (the CLI's start-up)
    loads neither torchvision nor the training engine nor torch._dynamo."""
    import subprocess
    import sys

    code = (
        "import sys, resnext.config\n"
        "heavy = [m for m in sys.modules if m.split('.')[0] == 'torchvision'\n"
        "         or m.startswith(('torch._dynamo', 'resnext.engine', 'resnext.data.build'))]\n"
        "print(sorted(heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
