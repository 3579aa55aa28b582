"""Complexity measured on the module graph, pinned to the paper's and torchvision's numbers."""

from __future__ import annotations

import json
import re

import pytest

from helpers import FIXTURES
from resnext.cli import main
from resnext.models import create_model, default_input_size, list_models, measure

PINNED = json.loads((FIXTURES / "complexity.json").read_text())


def truncated(x: float, digits: int = 1) -> float:
    """The paper prints parameter counts truncated, not rounded (25.56M -> "25.5M")."""
    return int(x * 10**digits) / 10**digits


def test_table1_resnet50_and_resnext50() -> None:
    r50 = measure(create_model("resnet50"))
    x50 = measure(create_model("resnext50_32x4d"))
    assert truncated(r50.params / 1e6) == 25.5 and round(r50.flops / 1e9, 1) == 4.1
    assert truncated(x50.params / 1e6) == 25.0 and round(x50.flops / 1e9, 1) == 4.2


@pytest.mark.parametrize(
    "name,params,gflops",
    [
        ("resnext50_32x4d", 25_028_904, 4.23),
        pytest.param("resnext101_32x8d", 88_791_336, 16.41, marks=pytest.mark.slow),
        pytest.param("resnext101_64x4d", 83_455_272, 15.46, marks=pytest.mark.slow),
    ],
)
def test_torchvision_exact_counts(name: str, params: int, gflops: float) -> None:
    c = measure(create_model(name))
    assert c.params == params
    assert round(c.flops / 1e9, 2) == gflops


def test_table7_cifar_resnext29() -> None:
    assert truncated(measure(create_model("resnext29_8x64d"), 32).params / 1e6) == 34.4
    assert truncated(measure(create_model("resnext29_16x64d"), 32).params / 1e6) == 68.1


@pytest.mark.parametrize("form", ["a", "b"])
def test_all_forms_have_the_same_counts(form: str) -> None:
    kw = {"widths": (64, 128, 256), "stem_width": 32}
    c = measure(create_model("resnext29_8x4d", **kw), 32)
    other = measure(create_model("resnext29_8x4d", block_form=form, **kw), 32)
    assert other.params == c.params
    assert other.flops == c.flops


def test_stages_add_up_and_follow_the_model() -> None:
    c = measure(create_model("resnext50_32x4d"))
    assert [s.name for s in c.stages] == ["stem", "layer1", "layer2", "layer3", "layer4", "head"]
    assert [s.output_shape[1:] for s in c.stages[1:5]] == [
        (256, 56, 56),
        (512, 28, 28),
        (1024, 14, 14),
        (2048, 7, 7),
    ]
    # The fc of 2048 -> 1000 is 2,048,000 multiply-adds and 2,049,000 parameters.
    assert c.stages[-1].flops == 2_048_000 and c.stages[-1].params == 2_049_000
    # Doubling the input side quadruples the conv FLOPs.
    c2 = measure(create_model("resnext50_32x4d"), 448)
    assert c2.flops - 2_048_000 == 4 * (c.flops - 2_048_000)
    assert c.activations > 0 and c2.activations == pytest.approx(4 * c.activations, rel=1e-3)


@pytest.mark.slow
@pytest.mark.parametrize("name", list_models())
def test_every_registered_model_matches_the_pinned_table(name: str) -> None:
    """Like pycls: every model's params / FLOPs / activations pinned in tests/fixtures."""
    c = measure(create_model(name), default_input_size(name))
    assert {"params": c.params, "flops": c.flops, "acts": c.activations} == PINNED[name]


def test_complexity_command_prints_the_counts(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["complexity", "resnext50_32x4d"]) == 0
    out = capsys.readouterr().out
    assert "params: 25.03M (25,028,904)" in out
    assert "FLOPs (multiply-adds): 4.23 G" in out
    assert "layer4" in out


def test_complexity_command_unknown_name_is_a_clear_error(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["complexity", "resnext50_32x5"]) == 2
    err = capsys.readouterr().err
    assert "unknown model 'resnext50_32x5'" in err and "resnext50_32x4d" in err


def test_models_command_lists_the_registry(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models", "--filter", "resnext29"]) == 0
    out = capsys.readouterr().out
    assert "resnext29_8x64d" in out and "34.43M" in out and "5.39" in out


# -- the pinned table, checked against counts that do not come from this package -------------
# torchvision's own ResNet (Bottleneck, groups, width_per_group) for every ImageNet family; its
# named builders where it has one. FLOPs by torch's FlopCounterMode (2 per multiply-add).
IMAGENET_BLOCKS = {50: [3, 4, 6, 3], 101: [3, 4, 23, 3], 152: [3, 8, 36, 3]}
TV_BUILDERS = {
    "resnet50",
    "resnet101",
    "resnet152",
    "resnext50_32x4d",
    "resnext101_32x8d",
    "resnext101_64x4d",
}
IMAGENET_PINNED = [n for n in PINNED if not n.startswith("resnext29_")]
CIFAR_PINNED = {"resnext29_8x64d": (8, 64, 34.4), "resnext29_16x64d": (16, 64, 68.1)}  # Table 7


def test_every_pinned_family_has_an_independent_check() -> None:
    assert set(PINNED) == set(IMAGENET_PINNED) | set(CIFAR_PINNED)


def _torchvision_resnet(name: str):
    import torchvision
    from torchvision.models.resnet import Bottleneck, ResNet

    if name in TV_BUILDERS:
        return getattr(torchvision.models, name)(weights=None)
    m = re.fullmatch(r"resnet(\d+)|resnext(\d+)_(\d+)x(\d+)d", name)
    assert m is not None, name
    depth, groups, width = (int(m[1]), 1, 64) if m[1] else (int(m[2]), int(m[3]), int(m[4]))
    return ResNet(Bottleneck, IMAGENET_BLOCKS[depth], groups=groups, width_per_group=width)


@pytest.mark.parametrize(
    "name",
    [
        n if n in ("resnet50", "resnext50_32x4d") else pytest.param(n, marks=pytest.mark.slow)
        for n in IMAGENET_PINNED
    ],
)
def test_pinned_imagenet_counts_are_torchvisions(name: str) -> None:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    tv = _torchvision_resnet(name).eval()
    params = sum(p.numel() for p in tv.parameters())
    ours = sum(p.numel() for p in create_model(name).parameters())
    assert params == ours == PINNED[name]["params"]
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        tv(torch.zeros(1, 3, 224, 224))
    assert counter.get_total_flops() // 2 == PINNED[name]["flops"]


def test_table1_numbers_of_the_pinned_table() -> None:
    """Paper Table 1, with its rounding: params truncated to 0.1M, GFLOPs rounded."""
    r50, x50 = PINNED["resnet50"], PINNED["resnext50_32x4d"]
    assert truncated(r50["params"] / 1e6) == 25.5 and round(r50["flops"] / 1e9, 1) == 4.1
    assert truncated(x50["params"] / 1e6) == 25.0 and round(x50["flops"] / 1e9, 1) == 4.2


def resnext29_by_hand(cardinality: int, width: int, classes: int = 10) -> tuple[int, int]:
    """Parameters and multiply-adds (32x32 input) of the paper's ResNeXt-29, from its text:
    3x3 stem of 64 (+BN); 3 stages of 3 bottlenecks with group width C*d doubling and outputs
    256, 512, 1024; stride 2 in the first block of stages 2 and 3; a projection (1x1 conv +
    BN) where the shape changes; global pool; fc. No conv biases."""
    params, macs, side, c_in = 3 * 64 * 9 + 2 * 64, 3 * 64 * 9 * 32 * 32, 32, 64
    for stage in range(3):
        w, c_out = cardinality * width * 2**stage, 256 * 2**stage
        for block in range(3):
            out = side // 2 if stage > 0 and block == 0 else side
            params += c_in * w + w * (w // cardinality) * 9 + w * c_out + 2 * (w + w + c_out)
            macs += c_in * w * side**2 + (w * (w // cardinality) * 9 + w * c_out) * out**2
            if block == 0:
                params += c_in * c_out + 2 * c_out
                macs += c_in * c_out * out**2
            c_in, side = c_out, out
    return params + 1024 * classes + classes, macs + 1024 * classes


@pytest.mark.parametrize("name", list(CIFAR_PINNED))
def test_pinned_cifar_counts_are_the_papers_resnext29(name: str) -> None:
    cardinality, width, table7_millions = CIFAR_PINNED[name]
    params, macs = resnext29_by_hand(cardinality, width)
    assert (PINNED[name]["params"], PINNED[name]["flops"]) == (params, macs)
    assert truncated(params / 1e6) == table7_millions
