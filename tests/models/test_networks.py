"""Facts about the networks: shapes, widths, strides, init, forms, and torchvision parity."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from resnext.models import (
    BLOCK_FORMS,
    GroupedBottleneck,
    ResNeXt,
    convert_block_form,
    create_model,
    list_models,
    measure,
)


def tiny(**kw) -> ResNeXt:
    """A small CIFAR-family ResNeXt-29 (C=4, d=4) that runs in milliseconds."""
    return create_model("resnext29_4x4d", widths=(32, 64, 128), stem_width=16, **kw)


# -- torchvision parity -------------------------------------------------------------------------
@pytest.mark.parametrize(
    "name",
    [
        "resnet50",
        "resnext50_32x4d",
        pytest.param("resnext101_32x8d", marks=pytest.mark.slow),
        pytest.param("resnext101_64x4d", marks=pytest.mark.slow),
    ],
)
def test_torchvision_state_dict_loads_strictly_and_gives_same_logits(name: str) -> None:
    reference = getattr(torchvision.models, name)().eval()
    # Perturb BN statistics so the comparison also covers running_mean/var.
    for m in reference.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.data.uniform_(0.5, 1.5)
    ours = create_model(name).eval()
    ours.load_state_dict(reference.state_dict(), strict=True)
    assert list(ours.state_dict()) == list(reference.state_dict())
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), reference(x), atol=1e-5, rtol=0)


# -- the architecture as the paper writes it ----------------------------------------------------
def test_group_conv_width_is_c_times_d_and_doubles_per_stage() -> None:
    model = create_model("resnext101_32x8d")
    for i, stage in enumerate(model.stages()):
        conv2 = stage[0].conv2
        assert conv2.groups == 32
        assert conv2.in_channels == conv2.out_channels == 32 * 8 * 2**i
    # The block output widths of Table 1.
    assert [s[-1].conv3.out_channels for s in model.stages()] == [256, 512, 1024, 2048]


def test_cifar_resnext29_widths_double_per_stage_and_outputs_match_paper() -> None:
    model = create_model("resnext29_8x64d")
    assert model.conv1.kernel_size == (3, 3) and model.conv1.out_channels == 64
    assert isinstance(model.maxpool, nn.Identity)
    assert [len(s) for s in model.stages()] == [3, 3, 3]
    assert [s[0].conv2.out_channels for s in model.stages()] == [512, 1024, 2048]
    assert [s[-1].conv3.out_channels for s in model.stages()] == [256, 512, 1024]
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


@pytest.mark.parametrize(
    "depth,blocks", [(50, [3, 4, 6, 3]), (101, [3, 4, 23, 3]), (152, [3, 8, 36, 3])]
)
def test_block_counts_per_depth(depth: int, blocks: list[int]) -> None:
    model = create_model(f"resnext{depth}_32x4d")
    assert [len(s) for s in model.stages()] == blocks
    # depth = 3 layers per block + stem conv + fc
    assert 3 * sum(blocks) + 2 == depth


def test_stride_is_on_the_3x3_conv_of_the_first_block_of_later_stages() -> None:
    model = create_model("resnext50_32x4d")
    for i, stage in enumerate(model.stages()):
        first = stage[0]
        assert first.conv1.stride == (1, 1)
        assert first.conv2.stride == ((1, 1) if i == 0 else (2, 2))
        assert first.downsample is not None  # projection shortcut: the shape changes
        assert first.downsample[0].stride == ((1, 1) if i == 0 else (2, 2))
        assert all(b.downsample is None and b.conv2.stride == (1, 1) for b in stage[1:])


def test_resnet_is_cardinality_one() -> None:
    model = create_model("resnet50")
    assert model.arch.cardinality == 1 and model.arch.bottleneck_width == 64
    assert model.layer1[0].conv2.groups == 1 and model.layer1[0].conv2.out_channels == 64


# -- initialisation ----------------------------------------------------------------------------
def test_init_is_kaiming_fan_out_and_bn_identity() -> None:
    model = create_model("resnext50_32x4d")
    conv = model.layer3[0].conv1  # 1x1 to C*d*4 = 512 channels: fan_out = 512
    expected = (2.0 / conv.out_channels) ** 0.5
    assert conv.weight.std().item() == pytest.approx(expected, rel=0.02)
    # PyTorch's fan-out of a grouped conv is out_channels * k * k (not divided by the
    # groups), as in fb.resnet.torch (n = kW * kH * nOutputPlane) and torchvision.
    conv3x3 = model.layer3[0].conv2
    assert conv3x3.weight.std().item() == pytest.approx((2.0 / (512 * 9)) ** 0.5, rel=0.02)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            assert torch.all(m.weight == 1) and torch.all(m.bias == 0)


def test_zero_init_last_bn_makes_each_block_start_as_identity_plus_shortcut() -> None:
    model = tiny(zero_init_last_bn=True)
    for m in model.modules():
        if isinstance(m, GroupedBottleneck):
            assert torch.all(m.bn3.weight == 0)
    block = model.layer1[1].eval()  # no projection: output = relu(x) for x >= 0
    x = torch.rand(1, 32, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(block(x), x)
    assert torch.all(tiny().layer1[0].bn3.weight == 1)


# -- the three block forms ---------------------------------------------------------------------
@pytest.mark.parametrize("form", ["a", "b"])
def test_forms_convert_exactly(form: str) -> None:
    model = tiny()
    # Train a few BN statistics in so running stats are not trivially 0/1.
    with torch.no_grad():
        model.train()(torch.randn(8, 3, 32, 32))
    model.eval()
    other = convert_block_form(model, form).eval()
    assert other.arch.block_form == form
    assert measure(other, 32).params == measure(model, 32).params
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(other(x), model(x), atol=1e-5, rtol=0)
    back = convert_block_form(other, "c")
    for (k, v), (k2, v2) in zip(model.state_dict().items(), back.state_dict().items(), strict=True):
        assert k == k2 and torch.equal(v, v2), k


def test_forms_have_the_expected_modules() -> None:
    a = create_model("resnext29_4x4d", block_form="a", widths=(32, 64, 128), stem_width=16)
    b = create_model("resnext29_4x4d", block_form="b", widths=(32, 64, 128), stem_width=16)
    assert len(a.layer1[0].paths) == 4 and a.layer1[0].paths[0].conv3 is not None
    assert len(b.layer1[0].paths) == 4 and b.layer1[0].paths[0].conv3 is None
    assert b.layer1[0].conv3.in_channels == 16
    assert set(BLOCK_FORMS) == {"a", "b", "c"}


def test_forms_train_identically_one_sgd_step() -> None:
    """Gradients map across forms too: one SGD step from equal weights stays equal."""
    c = tiny()
    a = convert_block_form(c, "a")
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    for model in (c, a):
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    c.eval(), a.eval()
    with torch.no_grad():
        torch.testing.assert_close(a(x), c(x), atol=1e-4, rtol=0)


# -- registry ----------------------------------------------------------------------------------
def test_registry_names() -> None:
    names = list_models()
    for required in [
        "resnet50",
        "resnet101",
        "resnet152",
        "resnext50_32x4d",
        "resnext101_32x4d",
        "resnext101_32x8d",
        "resnext101_64x4d",
        "resnext152_32x4d",
        "resnext29_8x64d",
        "resnext29_16x64d",
    ]:
        assert required in names


def test_general_names_are_parsed() -> None:
    model = create_model("resnext50_8x14d")
    assert (model.arch.depth, model.arch.cardinality, model.arch.bottleneck_width) == (50, 8, 14)
    assert model.layer1[0].conv2.groups == 8 and model.layer1[0].conv2.out_channels == 112
    assert create_model("resnext29_2x4d").arch.family == "cifar"


def test_unknown_name_lists_nearest_valid_names() -> None:
    with pytest.raises(ValueError, match="did you mean resnext50_32x4d"):
        create_model("resnext50_32x4")


@pytest.mark.parametrize(
    "name,kwargs,match",
    [
        ("resnext50_0x4d", {}, "cardinality must be a positive integer"),
        ("resnext50_32x0d", {}, "bottleneck_width must be a positive integer"),
        ("resnext51_32x4d", {}, "depth 51 has no block table"),
        ("resnet18", {}, "basic"),
        ("resnext50_32x4d", {"num_classes": 0}, "num_classes must be a positive integer"),
        ("resnext50_32x4d", {"block_form": "d"}, "block_form must be one of a, b, c"),
        ("resnext50_32x4d", {"cardinality": 8}, "fixed by the model name"),
        ("resnext29_8x4d", {"widths": (64, 128)}, "widths must list 3"),
    ],
)
def test_impossible_arguments_raise_value_error(name: str, kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        create_model(name, **kwargs)


# -- uniform surface ---------------------------------------------------------------------------
def test_uniform_surface() -> None:
    model = create_model("resnext50_32x4d", num_classes=7, in_chans=1).eval()
    x = torch.randn(2, 1, 64, 64)
    feats = model.forward_stages(x)
    assert {k: tuple(v.shape) for k, v in feats.items()} == {
        "layer1": (2, 256, 16, 16),
        "layer2": (2, 512, 8, 8),
        "layer3": (2, 1024, 4, 4),
        "layer4": (2, 2048, 2, 2),
    }
    f = model.forward_features(x)
    torch.testing.assert_close(f, feats["layer4"])
    assert model.forward_head(f, pre_logits=True).shape == (2, 2048)
    logits = model.forward_head(f)
    torch.testing.assert_close(logits, model(x))
    assert logits.shape == (2, 7)
    model.reset_classifier(3)
    assert model(x).shape == (2, 3) and model.arch.num_classes == 3
    assert model.get_classifier() is model.fc
