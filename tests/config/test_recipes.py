"""The recipes in configs/: each holds only what it sets over the documented defaults, says
why on every line, and resolves to the paper's numbers (PAPER.md "Training recipes");
demo.yaml sets nothing, so the defaults are the demo. format_config prints a resolved
config that is itself a valid recipe."""

from __future__ import annotations

import dataclasses
import re
import typing
from pathlib import Path
from typing import Any

import pytest
import yaml

from helpers import REPO
from resnext.config import Config, from_dict, load_config
from resnext.configdoc import field_docs, format_config, load_config_sources
from resnext.models import parse_name

CONFIGS = REPO / "configs"
IMAGENET = ["imagenet_resnext50_32x4d", "imagenet_resnext101_32x4d", "imagenet_resnext101_64x4d"]
CIFAR = [
    "cifar10_resnext29_8x64d",
    "cifar10_resnext29_16x64d",
    "cifar100_resnext29_8x64d",
    "cifar100_resnext29_16x64d",
]
ALL = ["demo", *IMAGENET, *CIFAR, "finetune_imagefolder", "fashion_mnist_resnext29"]
DEFAULTS = Config().to_dict()
# `  key: value  # comment` (or a section line `section:  # comment`), as a recipe spells it.
KEY_LINE = re.compile(r"^(?P<indent> *)(?P<key>[A-Za-z_]\w*):(?P<rest>.*)$")


def _recipe(name: str) -> dict[str, Any]:
    return yaml.safe_load((CONFIGS / f"{name}.yaml").read_text()) or {}


def _comments(name: str) -> dict[str, str]:
    """``"section.key"`` -> the comment on that key's line in the recipe file."""
    out, section = {}, ""
    for line in (CONFIGS / f"{name}.yaml").read_text().splitlines():
        m = KEY_LINE.match(line)
        if m is None:
            continue
        comment = m["rest"].split(" # ", 1)[1].strip() if " # " in m["rest"] else ""
        if m["indent"]:
            out[f"{section}.{m['key']}"] = comment
        else:
            section = m["key"]
    return out


def test_every_recipe_is_there() -> None:
    assert sorted(p.stem for p in CONFIGS.glob("*.yaml")) == sorted(ALL)


@pytest.mark.parametrize("name", ALL)
def test_recipe_loads_and_names_a_known_model(name: str) -> None:
    cfg = load_config(CONFIGS / f"{name}.yaml")
    parse_name(cfg.model.name)  # a model the registry knows


@pytest.mark.parametrize("name", ALL)
def test_recipe_holds_only_what_it_sets(name: str) -> None:
    """No recipe line repeats a default: the defaults are documented once, in config.py."""
    for section, values in _recipe(name).items():
        for key, value in values.items():
            resolved = from_dict({section: {key: value}}).to_dict()[section][key]
            assert resolved != DEFAULTS[section][key], (
                f"{name}.yaml sets {section}.{key}: {value!r}, which is the default; drop it"
            )


@pytest.mark.parametrize("name", ALL)
def test_every_line_says_why(name: str) -> None:
    """Each key line carries a comment, and it is the recipe's reason, not the field's doc
    copied from config.py (that one --print-config shows)."""
    path = CONFIGS / f"{name}.yaml"
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip() and not line.lstrip().startswith("#"):
            assert " # " in line, f"{path.name}:{n} has no comment: {line!r}"
    docs = field_docs()
    comments = _comments(name)
    assert set(comments) == {f"{s}.{k}" for s, v in _recipe(name).items() for k in v}
    for key, comment in comments.items():
        assert comment and comment != docs[key], f"{path.name}: {key} restates the field's doc"


def test_demo_yaml_sets_nothing_so_the_defaults_are_the_demo() -> None:
    """`resnext train` with no arguments and `resnext train configs/demo.yaml` are one run."""
    assert _recipe("demo") == {}
    assert load_config_sources(CONFIGS / "demo.yaml") == {}
    assert load_config(CONFIGS / "demo.yaml") == Config() == load_config()


@pytest.mark.parametrize("name", IMAGENET)
def test_imagenet_recipe_is_the_papers(name: str) -> None:
    cfg = load_config(CONFIGS / f"{name}.yaml")
    assert cfg.model.name == name.removeprefix("imagenet_")
    assert (cfg.model.stem_width, cfg.model.widths, cfg.model.zero_init_last_bn) == (
        64,
        None,
        False,
    )
    d = cfg.data
    assert d.name == "imagefolder" and d.root == "/path/to/imagenet"
    assert (d.image_size, d.eval_resize, d.augment) == (224, 256, "imagenet")
    # fb.resnet.torch resizes bicubic in the train crop and the eval Scale(256) alike.
    assert d.interpolation == "bicubic"
    assert (d.color_jitter, d.pca_lighting) == (0.4, 0.1)
    assert (d.mean, d.std) == ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    o = cfg.optim
    assert (o.name, o.lr, o.lr_base_batch, o.momentum, o.nesterov, o.weight_decay) == (
        "sgd",
        0.1,
        256,
        0.9,
        False,
        1e-4,
    )
    assert o.no_decay_bn_bias is False
    s = cfg.schedule
    assert (s.name, s.step_size, s.gamma, s.warmup_epochs) == ("step", 30, 0.1, 0.0)
    t = cfg.train
    assert t.epochs == 100  # lr /10 at 30, 60, 90
    # 8 processes x 32 = the paper's 256, so the scaled lr is exactly 0.1.
    assert (t.batch_size, t.accumulate_steps) == (32, 1)
    assert t.batch_size * 8 * t.accumulate_steps == o.lr_base_batch
    assert (t.label_smoothing, t.ema_decay, t.clip_grad_norm, t.precision) == (
        0.0,
        None,
        None,
        "fp32",
    )
    # The official val images are the test split; selection uses a slice of train.
    assert d.test_dir == "val" and d.val_dir is None and d.val_fraction > 0


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
    assert (cfg.data.image_size, cfg.data.eval_resize, cfg.data.augment) == (32, None, "cifar")
    assert cfg.data.cifar_labels == "fine"
    o = cfg.optim
    assert (o.name, o.lr, o.lr_base_batch, o.momentum, o.nesterov, o.weight_decay) == (
        "sgd",
        0.1,
        128,
        0.9,
        True,
        5e-4,
    )
    assert o.no_decay_bn_bias is False
    s = cfg.schedule
    assert (s.name, s.milestones, s.gamma, s.warmup_epochs) == ("multistep", (150, 225), 0.1, 0.0)
    t = cfg.train
    assert (t.epochs, t.batch_size, t.accumulate_steps) == (300, 128, 1)
    assert (t.label_smoothing, t.ema_decay, t.clip_grad_norm, t.precision) == (
        0.0,
        None,
        None,
        "fp32",
    )


def test_every_field_has_a_doc() -> None:
    docs = field_docs()
    hints = typing.get_type_hints(Config)
    expected = {
        f"{section.name}.{f.name}"
        for section in dataclasses.fields(Config)
        for f in dataclasses.fields(hints[section.name])
    }
    assert set(docs) == expected
    assert [key for key, doc in docs.items() if not doc] == []
    # Same-line comments and the block above a field (data.name) are both read.
    assert docs["train.epochs"] == "passes over the train split"
    assert docs["data.name"].startswith("dataset reader: digits | cifar10")


def _line_of(text: str, section: str, key: str) -> str:
    lines = text.splitlines()
    start = lines.index(next(ln for ln in lines if ln.startswith(f"{section}:")))
    return next(ln for ln in lines[start + 1 :] if ln.startswith(f"  {key}:"))


@pytest.mark.parametrize("name", [None, *ALL])
def test_format_config_round_trips_and_marks_the_recipe(name: str | None) -> None:
    path = None if name is None else CONFIGS / f"{name}.yaml"
    cfg, sources = load_config(path), load_config_sources(path)
    text = format_config(cfg, sources)
    loaded = yaml.safe_load(text)
    assert from_dict(loaded) == cfg
    assert list(loaded) == list(cfg.to_dict())  # sections, then keys, in to_dict order
    assert all(list(loaded[s]) == list(v) for s, v in cfg.to_dict().items())
    docs = field_docs()
    for key, doc in docs.items():
        section, field_name = key.split(".")
        line = _line_of(text, section, field_name)
        mark = f"# [recipe] {doc}" if key in sources else f"# {doc}"
        assert line.endswith(mark), line
    marked = sum("# [recipe]" in line for line in text.splitlines())
    assert marked == len(sources) == sum(len(v) for v in _recipe(name or "demo").values())


def test_format_config_marks_overrides_and_they_win_over_the_recipe() -> None:
    path = CONFIGS / "cifar10_resnext29_8x64d.yaml"
    overrides = ["train.epochs=3", "optim.lr=0.05", "train.amp=bf16"]
    sources = load_config_sources(path, overrides)
    assert sources["train.epochs"] == "override"  # the recipe sets it too; the override wins
    assert sources["optim.lr"] == "override"
    assert sources["train.precision"] == "override"  # the old key is named as today
    assert sources["model.name"] == "recipe"
    assert "train.seed" not in sources
    cfg = load_config(path, overrides)
    text = format_config(cfg, sources)
    assert from_dict(yaml.safe_load(text)) == cfg
    assert _line_of(text, "train", "epochs").startswith("  epochs: 3 ")
    assert "# [override] passes over the train split" in _line_of(text, "train", "epochs")
    assert "# [override]" in _line_of(text, "train", "precision")
    assert "# [recipe]" in _line_of(text, "model", "name")
    assert "[" not in _line_of(text, "train", "seed").split("#", 1)[1]


def test_format_config_comments_align_and_values_read_back_as_themselves() -> None:
    # Strings YAML would misread unquoted, and a '#' inside a value, still round-trip.
    cfg = load_config(
        overrides=[
            "train.run_name='yes'",
            "data.root='/data/a #1: x'",
            "train.output_dir='null'",
            "optim.weight_decay=1e-10",
            "model.widths=[8,16,32]",
        ]
    )
    text = format_config(cfg)
    assert from_dict(yaml.safe_load(text)) == cfg
    assert "# [recipe]" not in text and "# [override]" not in text  # no sources: none marked
    prefixes = [line.split("  # ", 1)[0] for line in text.splitlines()]
    columns = {len(p) for p in prefixes if not p.startswith("#") and len(p.rstrip()) < 40}
    assert len(columns) == 1, f"comments start at several columns: {sorted(columns)}"


def test_train_print_config_prints_the_resolved_recipe_and_exits(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    from resnext.cli import main

    monkeypatch.chdir(tmp_path)
    recipe = CONFIGS / "imagenet_resnext50_32x4d.yaml"
    assert main(["train", str(recipe), "train.epochs=3", "--print-config"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^  interpolation: bicubic +# \[recipe\]", out, re.M)
    assert re.search(r"^  epochs: 3 +# \[override\]", out, re.M)
    assert re.search(r"^  precision: fp32 +# \[recipe\] autocast: auto", out, re.M)
    assert re.search(r"^  channels_last: true +# NHWC memory", out, re.M)  # a default, with doc
    assert load_config(recipe, ["train.epochs=3"]) == from_dict(yaml.safe_load(out))
    assert not (tmp_path / "runs").exists()  # nothing trained, no run folder
