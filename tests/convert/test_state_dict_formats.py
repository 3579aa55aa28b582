"""Other repositories' formats: wrapped state dicts, Lornatang's .pth.tar, nutszebra's .npz.

Every file is written here the way its source writes it; converted models are compared with
the source's tensors or with an independent forward pass of the source's arithmetic.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision

from resnext.checkpoint import WeightsError
from resnext.convert.chainer import import_chainer_npz
from resnext.convert.lornatang import import_lornatang
from resnext.convert.state_dict import (
    TV_V2_FILES,
    describe_state_dict,
    import_state_dict,
    infer_architecture,
)
from resnext.models import Architecture, ResNeXt, create_model


def tiny(**kw) -> ResNeXt:
    """A small CIFAR ResNeXt-29 with non-trivial BN statistics."""
    model = create_model("resnext29_2x4d", widths=(16, 32, 64), stem_width=16, **kw)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
    return model.eval()


def assert_same(model: torch.nn.Module, state: dict) -> None:
    own = model.state_dict()
    assert set(own) == set(state)
    for k, v in state.items():
        assert torch.equal(own[k], v), k


# -- state dicts ----------------------------------------------------------------------------
WRAPS = {
    "raw": lambda sd: sd,
    "state_dict": lambda sd: {"state_dict": sd, "epoch": 3},
    "model": lambda sd: {"model": sd},
    "ddp": lambda sd: {f"module.{k}": v for k, v in sd.items()},
    "compile": lambda sd: {f"_orig_mod.{k}": v for k, v in sd.items()},
    "compiled_ddp": lambda sd: {f"_orig_mod.module.{k}": v for k, v in sd.items()},
    "lightning": lambda sd: {"state_dict": {f"model.{k}": v for k, v in sd.items()}},
    # saved before PyTorch 0.4.1 (old torchvision files): no num_batches_tracked
    "old_torch": lambda sd: {k: v for k, v in sd.items() if "num_batches" not in k},
}


@pytest.mark.parametrize("wrap", WRAPS)
@pytest.mark.parametrize("form", ["c", "a"])
def test_wrapped_state_dicts_import_identically(tmp_path: Path, wrap: str, form: str) -> None:
    model = tiny(block_form=form)
    torch.save(WRAPS[wrap](model.state_dict()), tmp_path / "w.pth")
    got = import_state_dict(tmp_path / "w.pth")
    assert got.model.arch == model.arch  # inferred exactly, block form included
    assert_same(got.model, model.state_dict())
    assert got.source["weights"] == "model" and got.preprocess.image_size == 32


@pytest.mark.parametrize("key", ["ema", "model_ema", "state_dict_ema", "ema_state_dict"])
def test_ema_entries(tmp_path: Path, key: str) -> None:
    model, ema = tiny(), tiny()
    torch.save(
        {
            "state_dict": model.state_dict(),
            key: {f"module.{k}": v for k, v in ema.state_dict().items()},
        },
        tmp_path / "e.pth",
    )
    assert_same(import_state_dict(tmp_path / "e.pth", ema=True).model, ema.state_dict())
    plain = import_state_dict(tmp_path / "e.pth")
    assert_same(plain.model, model.state_dict())
    assert plain.source["ema_available"] == key
    torch.save({"state_dict": model.state_dict()}, tmp_path / "no_ema.pth")
    with pytest.raises(WeightsError, match=r"no_ema.pth holds no EMA weights.*state_dict"):
        import_state_dict(tmp_path / "no_ema.pth", ema=True)


def test_averaged_model_ema_drops_only_n_averaged(tmp_path: Path) -> None:
    model = tiny()
    avg = torch.optim.swa_utils.AveragedModel(model)
    avg.update_parameters(model)
    torch.save({"state_dict": tiny().state_dict(), "ema": avg.state_dict()}, tmp_path / "a.pth")
    got = import_state_dict(tmp_path / "a.pth", ema=True)
    assert_same(got.model, model.state_dict())
    assert got.source["n_averaged"] == 1


@pytest.mark.parametrize(
    "name", ["resnext50_32x4d", "resnext101_64x4d", "resnet50", "resnext29_8x64d"]
)
def test_infer_architecture_of_full_size_models(name: str) -> None:
    with torch.device("meta"):  # shapes only: no memory, no init time
        ours = create_model(name)
        tv = getattr(torchvision.models, name)() if hasattr(torchvision.models, name) else None
    state = (tv or ours).state_dict()
    assert Architecture(**infer_architecture(state)) == ours.arch


def test_torchvision_preprocessing_from_the_file_name(tmp_path: Path) -> None:
    state = ResNeXt(
        depth=26, cardinality=2, bottleneck_width=4, widths=(16, 32, 64, 128), num_classes=5
    ).state_dict()
    for name, resize in (
        ("resnext50_32x4d-7cdf4587.pth", 256),
        ("w.pth", 256),
        ("resnext50_32x4d-1a0047aa.pth", 232),
        ("resnext101_64x4d-173b62eb.pth", 232),
    ):
        torch.save(state, tmp_path / name)
        got = import_state_dict(tmp_path / name)
        assert (got.preprocess.eval_resize, got.preprocess.image_size) == (resize, 224), name
        assert got.preprocess.interpolation == "bilinear"
    forced = import_state_dict(tmp_path / "resnext50_32x4d-1a0047aa.pth", preprocess="tv-v1")
    assert forced.preprocess.eval_resize == 256


def test_v2_file_table_is_torchvisions() -> None:
    resnet = torchvision.models.resnet
    at_232 = {
        w.url.rsplit("/", 1)[1].removesuffix(".pth")
        for e in vars(resnet).values()
        if isinstance(e, type) and e.__name__.endswith("_Weights")
        for w in e
        if w.transforms().resize_size == [232]
    }
    assert at_232 == set(TV_V2_FILES)


def test_wrong_shape_and_missing_key_are_named(tmp_path: Path) -> None:
    state = tiny().state_dict()
    state["layer2.1.bn2.weight"] = torch.ones(7)
    torch.save(state, tmp_path / "bad.pth")
    with pytest.raises(WeightsError, match=r"bad.pth.*layer2.1.bn2.weight: file \(7,\)"):
        import_state_dict(tmp_path / "bad.pth")
    state = tiny().state_dict()
    del state["layer3.1.conv1.weight"]
    state["layer3.1.extra"] = torch.zeros(1)
    torch.save(state, tmp_path / "miss.pth")
    with pytest.raises(
        WeightsError, match=r"missing keys \(layer3.1.conv1.weight\).*layer3.1.extra"
    ):
        import_state_dict(tmp_path / "miss.pth")
    state = create_model("resnext29_2x4d").state_dict()  # the name gives the paper's widths
    torch.save(state, tmp_path / "named.pth")
    assert (
        import_state_dict(tmp_path / "named.pth", model="resnext29_2x4d").source[
            "architecture_from"
        ]
        == "model name resnext29_2x4d"
    )
    with pytest.raises(
        WeightsError,
        match=r"shape mismatches.*The file's shapes fit depth 29, "
        r"cardinality 2, width 4",
    ):
        import_state_dict(tmp_path / "named.pth", model="resnext29_4x4d")
    del state["layer3.1.conv1.weight"]
    torch.save(state, tmp_path / "named.pth")
    with pytest.raises(WeightsError, match=r"named.pth.*missing keys.*layer3.1.conv1.weight"):
        import_state_dict(tmp_path / "named.pth", model="resnext29_2x4d")


def kuangliu_resnet18() -> dict[str, torch.Tensor]:
    """kuangliu/pytorch-cifar's ResNet18: BasicBlocks, ``shortcut`` projections, ``linear``."""
    state, c_in = {}, 64

    def bn(name: str, c: int) -> None:
        for k in ("weight", "bias", "running_mean", "running_var"):
            state[f"{name}.{k}"] = torch.ones(c)
        state[f"{name}.num_batches_tracked"] = torch.tensor(0)

    state["conv1.weight"] = torch.zeros(64, 3, 3, 3)
    bn("bn1", 64)
    for s, c in enumerate((64, 128, 256, 512), start=1):
        for j in range(2):
            p = f"layer{s}.{j}"
            state[f"{p}.conv1.weight"] = torch.zeros(c, c_in, 3, 3)
            bn(f"{p}.bn1", c)
            state[f"{p}.conv2.weight"] = torch.zeros(c, c, 3, 3)
            bn(f"{p}.bn2", c)
            if c_in != c:
                state[f"{p}.shortcut.0.weight"] = torch.zeros(c, c_in, 1, 1)
                bn(f"{p}.shortcut.1", c)
            c_in = c
    state["linear.weight"], state["linear.bias"] = torch.zeros(10, 512), torch.zeros(10)
    return state


def test_other_networks_say_what_they_are(tmp_path: Path) -> None:
    torch.save(kuangliu_resnet18(), tmp_path / "ckpt.pth")
    with pytest.raises(WeightsError, match=r"ckpt.pth.*CIFAR ResNet.*linear.weight.*not a ResNeXt"):
        import_state_dict(tmp_path / "ckpt.pth")
    with torch.device("meta"):
        nets = {
            n: getattr(torchvision.models, n)().state_dict()
            for n in ("resnet18", "vgg16", "vit_b_16", "densenet121", "resnext50_32x4d")
        }
    assert re.search(r"basic blocks.*resnet18\?", describe_state_dict(nets["resnet18"]))
    assert (
        "VGG-style network (features.N.weight, classifier.N.weight: 13 conv layers, vgg16?)"
        in describe_state_dict(nets["vgg16"])
    )
    assert "Vision Transformer" in describe_state_dict(nets["vit_b_16"])
    assert "DenseNet" in describe_state_dict(nets["densenet121"])
    assert "(cardinality 32, bottleneck width 4)" in describe_state_dict(nets["resnext50_32x4d"])


# -- Lornatang/ResNetXt-PyTorch -------------------------------------------------------------
def test_lornatang_checkpoint_model_and_inverted_ema(tmp_path: Path) -> None:
    torch.manual_seed(1)
    model = ResNeXt(
        depth=26, cardinality=4, bottleneck_width=2, widths=(16, 32, 64, 128), num_classes=10
    )
    decay = 0.99998  # their config.py; their avg_fn, inverted as in their train.py:
    ema = torch.optim.swa_utils.AveragedModel(
        model, avg_fn=lambda avg, new, n: (1 - decay) * avg + decay * new
    )
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=2e-5)
    sched = torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(opt, 150, 1, 5e-5)
    for _ in range(2):  # two training steps in train mode (BN statistics move), EMA after each
        prev = [p.detach().clone() for p in ema.module.parameters()]
        model.train()
        F.cross_entropy(model(torch.randn(4, 3, 64, 64)), torch.tensor([0, 1, 2, 3])).backward()
        opt.step()
        opt.zero_grad()
        ema.update_parameters(model)
    sched.step()
    ckpt = {
        "epoch": 1,
        "best_acc1": 12.5,
        "state_dict": model.state_dict(),
        "ema_state_dict": ema.state_dict(),
        "optimizer": opt.state_dict(),
        "scheduler": sched.state_dict(),
    }
    torch.save(ckpt, tmp_path / "epoch_1.pth.tar")
    # Before PyTorch 2.0 the EMA's buffers were never updated: its BN statistics stayed 0 / 1.
    old = {
        k: (
            torch.zeros_like(v)
            if "running_mean" in k or "num_batches" in k
            else torch.ones_like(v)
            if "running_var" in k
            else v
        )
        for k, v in ckpt["ema_state_dict"].items()
    }
    torch.save({**ckpt, "ema_state_dict": old}, tmp_path / "torch1.pth.tar")

    trained = import_lornatang(tmp_path / "epoch_1.pth.tar")
    assert_same(trained.model, model.state_dict())
    assert trained.source["weights"] == "model" and trained.source["epoch"] == 1
    averaged = import_lornatang(tmp_path / "epoch_1.pth.tar", ema=True)
    assert_same(averaged.model, ema.module.state_dict())
    assert averaged.source["n_averaged"] == 2
    assert any("inverted" in n for n in averaged.source["notes"])
    assert not any("BatchNorm statistics" in n for n in averaged.source["notes"])
    stale = import_lornatang(tmp_path / "torch1.pth.tar", ema=True).source["notes"]
    assert any("BatchNorm statistics are the initial 0 / 1" in n for n in stale)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert not torch.allclose(trained.model(x), averaged.model(x))
    # The inversion, as a fact: the "EMA" is 0.99998 new + 0.00002 old weights.
    for p_ema, p_new, p_old in zip(ema.module.parameters(), model.parameters(), prev, strict=True):
        assert torch.allclose(p_ema, decay * p_new + (1 - decay) * p_old, atol=1e-6)
    # ... and what the package hands over as the EMA is that inverted average, computed here
    # from the trained weights and the step before.
    for p_got, p_new, p_old in zip(
        averaged.model.parameters(), model.parameters(), prev, strict=True
    ):
        assert torch.allclose(p_got, decay * p_new + (1 - decay) * p_old, atol=1e-6)
    assert trained.preprocess.describe() == "resize 256 -> crop 224, bilinear"


# Their model.py, written out by hand (not through our model): stem conv1/bn1 of 64 channels;
# layer1..4 of _Bottleneck blocks (planes 64, 128, 256, 512, expansion 4) with conv1 (1x1),
# conv2 (3x3, groups=C, the stage's stride), conv3 (1x1), bn1..bn3, and downsample.0 (1x1 conv,
# stride) / downsample.1 (BN) on each stage's first block; fc.
# Group width: int(planes * d / 64) * C.
def lornatang_state(
    blocks: tuple[int, ...], groups: int, d: int, classes: int, seed: int
) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    state: dict[str, torch.Tensor] = {}

    def conv(name: str, shape: tuple[int, ...]) -> None:
        fan_in = shape[1] * shape[2] * shape[3]
        state[f"{name}.weight"] = torch.randn(shape, generator=g) * (2 / fan_in) ** 0.5

    def bn(name: str, c: int) -> None:
        state[f"{name}.weight"] = torch.rand(c, generator=g) + 0.5
        state[f"{name}.bias"] = torch.randn(c, generator=g) * 0.1
        state[f"{name}.running_mean"] = torch.randn(c, generator=g) * 0.2
        state[f"{name}.running_var"] = torch.rand(c, generator=g) + 0.5
        state[f"{name}.num_batches_tracked"] = torch.tensor(7)

    conv("conv1", (64, 3, 7, 7))
    bn("bn1", 64)
    cin = 64
    for i, (n, planes) in enumerate(zip(blocks, (64, 128, 256, 512), strict=True), 1):
        width = int(planes * (d / 64.0)) * groups
        for j in range(n):
            p = f"layer{i}.{j}"
            conv(f"{p}.conv1", (width, cin, 1, 1))
            bn(f"{p}.bn1", width)
            conv(f"{p}.conv2", (width, width // groups, 3, 3))
            bn(f"{p}.bn2", width)
            conv(f"{p}.conv3", (planes * 4, width, 1, 1))
            bn(f"{p}.bn3", planes * 4)
            if j == 0:
                conv(f"{p}.downsample.0", (planes * 4, cin, 1, 1))
                bn(f"{p}.downsample.1", planes * 4)
            cin = planes * 4
    state["fc.weight"] = torch.randn(classes, 2048, generator=g) * 0.02
    state["fc.bias"] = torch.randn(classes, generator=g) * 0.1
    return state


def lornatang_forward(s: dict[str, torch.Tensor], x: torch.Tensor, groups: int) -> torch.Tensor:
    """Their forward, from the state dict's names alone (eval-mode BN, eps 1e-5)."""

    def bn(h: torch.Tensor, n: str) -> torch.Tensor:
        m, v = s[f"{n}.running_mean"][:, None, None], s[f"{n}.running_var"][:, None, None]
        w, b = s[f"{n}.weight"][:, None, None], s[f"{n}.bias"][:, None, None]
        return (h - m) / torch.sqrt(v + 1e-5) * w + b

    h = F.relu(bn(F.conv2d(x, s["conv1.weight"], stride=2, padding=3), "bn1"))
    h = F.max_pool2d(h, 3, 2, 1)
    for i in range(1, 5):
        j = 0
        while f"layer{i}.{j}.conv1.weight" in s:
            p, stride = f"layer{i}.{j}", (2 if i > 1 and j == 0 else 1)
            out = F.relu(bn(F.conv2d(h, s[f"{p}.conv1.weight"]), f"{p}.bn1"))
            out = F.conv2d(out, s[f"{p}.conv2.weight"], stride=stride, padding=1, groups=groups)
            out = F.relu(bn(out, f"{p}.bn2"))
            out = bn(F.conv2d(out, s[f"{p}.conv3.weight"]), f"{p}.bn3")
            if f"{p}.downsample.0.weight" in s:
                h = F.conv2d(h, s[f"{p}.downsample.0.weight"], stride=stride)
                h = bn(h, f"{p}.downsample.1")
            h = F.relu(out + h)
            j += 1
    return F.linear(h.mean((2, 3)), s["fc.weight"], s["fc.bias"])


def test_lornatang_layout_written_by_hand_converts_exactly(tmp_path: Path) -> None:
    """A checkpoint whose keys and shapes come from their model.py's layout (not from our
    model): the converted model computes their forward, and the EMA taken is exactly the
    ema_state_dict written (their inverted average of two weight sets), prefix dropped."""
    blocks, groups, d = (2, 2, 2, 2), 4, 2
    new = lornatang_state(blocks, groups, d, 10, seed=0)
    old = lornatang_state(blocks, groups, d, 10, seed=1)
    decay = 0.99998
    inverted = {
        k: (1 - decay) * old[k] + decay * v if v.is_floating_point() and "running" not in k else v
        for k, v in new.items()
    }
    ema = {"n_averaged": torch.tensor(2), **{f"module.{k}": v for k, v in inverted.items()}}
    ckpt = {"epoch": 4, "best_acc1": 1.0, "state_dict": new, "ema_state_dict": ema}
    torch.save(ckpt, tmp_path / "best.pth.tar")

    trained = import_lornatang(tmp_path / "best.pth.tar")
    arch = trained.model.arch
    assert (arch.cardinality, arch.bottleneck_width, arch.num_classes) == (groups, d, 10)
    assert_same(trained.model, new)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ours, theirs = trained.model(x), lornatang_forward(new, x, groups)
    assert theirs.std() > 0.1
    assert torch.allclose(ours, theirs, rtol=0, atol=1e-4), (ours - theirs).abs().max()

    averaged = import_lornatang(tmp_path / "best.pth.tar", ema=True)
    assert_same(averaged.model, inverted)
    assert averaged.source["n_averaged"] == 2
    with torch.no_grad():
        assert torch.allclose(averaged.model(x), lornatang_forward(inverted, x, groups), atol=1e-4)


# -- nutszebra/resnext Chainer .npz ---------------------------------------------------------
def _conv(a: dict, rng: np.random.Generator, name: str, shape: tuple, gain: float = 2) -> None:
    fan_in = int(np.prod(shape[1:]))
    a[f"{name}/W"] = rng.normal(0, np.sqrt(gain / fan_in), shape).astype(np.float32)
    a[f"{name}/b"] = rng.normal(0, 0.1, shape[:1]).astype(np.float32)


def _bn(a: dict, rng: np.random.Generator, name: str, c: int) -> None:
    a[f"{name}/gamma"] = rng.uniform(0.5, 1.5, c).astype(np.float32)
    a[f"{name}/beta"] = rng.normal(0, 0.1, c).astype(np.float32)
    a[f"{name}/avg_mean"] = rng.normal(0, 0.2, c).astype(np.float32)
    a[f"{name}/avg_var"] = rng.uniform(0.5, 1.5, c).astype(np.float32)
    a[f"{name}/N"] = np.asarray(0)  # Chainer's persistent count, saved as a 0-d int


def ilsvrc_arrays(c: int = 12, d: int = 2, mult: int = 2) -> dict[str, np.ndarray]:
    """resnext_ilsvrc.ResNext(10, block_num=(2, 2, 2, 2), C=c, d=d, multiplier=mult)."""
    rng, a, c_in = np.random.default_rng(0), {}, 64
    _conv(a, rng, "conv_bn_relu/conv", (64, 3, 7, 7))
    _bn(a, rng, "conv_bn_relu/bn", 64)
    for i in range(4):
        w = c * d * 2**i
        for j in range(2):
            blk = f"resnext_block_{i}_{j}"
            if j == 0:
                _conv(a, rng, f"skip_connection_{i}/conv", (w * mult, c_in, 1, 1))
                _bn(a, rng, f"skip_connection_{i}/bn", w * mult)
            _conv(a, rng, f"{blk}/conv_bn_relu_1/conv", (w, c_in, 1, 1))
            _bn(a, rng, f"{blk}/conv_bn_relu_1/bn", w)
            for g in range(c):
                _conv(a, rng, f"{blk}/conv_group_2/conv_group_{g}/conv", (w // c, w // c, 3, 3))
            _bn(a, rng, f"{blk}/bn_relu_3/bn", w)
            _conv(a, rng, f"{blk}/conv_bn_4/conv", (w * mult, w, 1, 1))
            _bn(a, rng, f"{blk}/conv_bn_4/bn", w * mult)
            c_in = w * mult
    a["linear/linear/W"] = rng.normal(0, 0.2 / c_in, (10, c_in)).astype(np.float32)
    a["linear/linear/b"] = rng.normal(0, 0.1, 10).astype(np.float32)
    return a


def cifar_arrays(c: int = 11, d: int = 2, mult: int = 4) -> dict[str, np.ndarray]:
    """resnext.ResNext(10, block_num=(3, 3, 3), C=c, d=d, multiplier=mult)."""
    rng, a, c_in = np.random.default_rng(1), {}, d * mult
    _conv(a, rng, "conv_bn_relu/conv", (c_in, 3, 3, 3))
    _bn(a, rng, "conv_bn_relu/bn", c_in)
    for s in range(1, 4):
        w, out = c * d * 2 ** (s - 1), d * 2 ** (s - 1) * mult
        for j in range(1, 4):
            blk = f"resnext_block_{s}_{j}"
            for g in range(1, c + 1):
                _conv(a, rng, f"{blk}/conv_bn_relu1_{g}/conv", (w // c, c_in, 1, 1))
                _bn(a, rng, f"{blk}/conv_bn_relu1_{g}/bn", w // c)
                _conv(a, rng, f"{blk}/conv_bn_relu2_{g}/conv", (w // c, w // c, 3, 3))
                _bn(a, rng, f"{blk}/conv_bn_relu2_{g}/bn", w // c)
            _conv(a, rng, f"{blk}/conv_bn_relu3/conv", (out, w, 1, 1))
            _bn(a, rng, f"{blk}/conv_bn_relu3/bn", out)
            c_in = out
    _conv(a, rng, "linear/conv", (10, c_in, 1, 1), gain=0.01)
    _bn(a, rng, "linear/bn", 10)
    return a


def chainer_forward(a: dict, x: torch.Tensor, layout: str, ours_relu: bool = False) -> torch.Tensor:
    """The Chainer models' arithmetic in float64: per-group convs with their own biases, BN
    from avg_mean/avg_var, cover_all max pooling; ``ours_relu`` moves the CIFAR ReLUs to
    where our blocks have them (after the addition, none on the logits)."""
    t = {k: torch.from_numpy(v).double() for k, v in a.items() if v.ndim}
    eps = 1e-5 if layout == "ilsvrc" else 2e-5

    def conv(h, name, stride=1, pad=0):
        return F.conv2d(h, t[f"{name}/W"], t[f"{name}/b"], stride, pad)

    def bn(h, name):
        g, b, m, v = (
            t[f"{name}/{k}"][:, None, None] for k in ("gamma", "beta", "avg_mean", "avg_var")
        )
        return (h - m) / torch.sqrt(v + eps) * g + b

    x = x.double()
    if layout == "ilsvrc":
        h = F.relu(bn(conv(x, "conv_bn_relu/conv", 2, 3), "conv_bn_relu/bn"))
        h = F.max_pool2d(F.pad(h, (1, 2, 1, 2), value=float("-inf")), 3, 2)  # cover_all=True
        for i in range(4):
            for j in range(2):
                blk, stride = f"resnext_block_{i}_{j}", 2 if i and not j else 1
                u = F.relu(bn(conv(h, f"{blk}/conv_bn_relu_1/conv"), f"{blk}/conv_bn_relu_1/bn"))
                n = len([k for k in t if k.startswith(f"{blk}/conv_group_2/") and k.endswith("W")])
                s = u.shape[1] // n
                u = torch.cat(
                    [
                        conv(
                            u[:, g * s : (g + 1) * s],
                            f"{blk}/conv_group_2/conv_group_{g}/conv",
                            stride,
                            1,
                        )
                        for g in range(n)
                    ],
                    1,
                )
                u = F.relu(bn(u, f"{blk}/bn_relu_3/bn"))
                u = bn(conv(u, f"{blk}/conv_bn_4/conv"), f"{blk}/conv_bn_4/bn")
                skip = (
                    bn(conv(h, f"skip_connection_{i}/conv", stride), f"skip_connection_{i}/bn")
                    if j == 0
                    else h
                )
                h = F.relu(u + skip)
        return F.linear(h.mean((2, 3)), t["linear/linear/W"], t["linear/linear/b"])
    h = F.relu(bn(conv(x, "conv_bn_relu/conv", 1, 1), "conv_bn_relu/bn"))
    for s in range(1, 4):
        for j in range(1, 4):
            blk, stride = f"resnext_block_{s}_{j}", 2 if s > 1 and j == 1 else 1
            n = len([k for k in t if k.startswith(f"{blk}/conv_bn_relu1_") and k.endswith("/W")])
            paths = []
            for g in range(1, n + 1):
                p1, p2 = f"{blk}/conv_bn_relu1_{g}", f"{blk}/conv_bn_relu2_{g}"
                u = F.relu(bn(conv(h, f"{p1}/conv"), f"{p1}/bn"))
                paths.append(F.relu(bn(conv(u, f"{p2}/conv", stride, 1), f"{p2}/bn")))
            u = bn(
                conv(torch.cat(paths, 1), f"{blk}/conv_bn_relu3/conv"), f"{blk}/conv_bn_relu3/bn"
            )
            skip = h[:, :, ::stride, ::stride]  # average_pooling_2d(x, 1, 2, 0), then zero pad
            skip = torch.cat(
                [skip, skip.new_zeros(skip.shape[0], u.shape[1] - skip.shape[1], *skip.shape[2:])],
                1,
            )
            h = F.relu(u + skip) if ours_relu else F.relu(u) + skip
    logits = bn(conv(h.mean((2, 3), keepdim=True), "linear/conv"), "linear/bn").flatten(1)
    return logits if ours_relu else F.relu(logits)


def test_chainer_ilsvrc_layout_matches_chainers_arithmetic(tmp_path: Path) -> None:
    a = ilsvrc_arrays()
    np.savez_compressed(tmp_path / "resnext_50.model", **a)  # what save_npz does
    np.savez(tmp_path / "wrapped.npz", **{f"predictor/{k}": v for k, v in a.items()})
    for name in ("resnext_50.model.npz", "wrapped.npz"):
        got = import_chainer_npz(tmp_path / name)
        assert got.model.arch.cardinality == 12 and got.model.arch.depth == 26
        assert got.source["exact"] and got.source["bn_eps"] == 1e-5
        # 66: the 33x33 stem output pools to 17x17 both in floor and in cover_all mode
        x = torch.randn(2, 3, 66, 66)
        with torch.no_grad():
            ref = chainer_forward(a, x, "ilsvrc")
            diff = (got.model(x).double() - ref).abs().max().item()
        assert diff <= 1e-4 and ref.std() > 0.3, diff
    assert got.preprocess.describe() == "resize 256 -> crop 224, bicubic"
    x = torch.randn(2, 3, 64, 64)  # 32x32 after the stem: 17x17 in Chainer, 16x16 here
    with torch.no_grad():
        assert (got.model(x).double() - chainer_forward(a, x, "ilsvrc")).abs().max() > 1e-3
    assert any("cover_all=True" in n for n in got.source["notes"])


def test_chainer_cifar_layout_is_refused_or_converted_inexactly(tmp_path: Path) -> None:
    a = cifar_arrays()
    np.savez(tmp_path / "cifar.npz", **a)
    with pytest.raises(WeightsError, match=r"cifar.npz.*ReLU before the addition"):
        import_chainer_npz(tmp_path / "cifar.npz")
    got = import_chainer_npz(tmp_path / "cifar.npz", allow_inexact=True)
    assert not got.source["exact"] and got.source["bn_eps"] == 2e-5
    assert got.model.arch.cardinality == 11 and got.model.arch.widths == (8, 16, 32)
    # Chainer's eps 2e-5 lives on in running_var (var + 2e-5 - 1e-5), so a saved file keeps it
    var = torch.from_numpy(a["resnext_block_2_1/conv_bn_relu3/bn/avg_var"])
    assert torch.allclose(got.model.layer2[0].bn3.running_var, var + 1e-5, rtol=0, atol=1e-7)
    assert got.model.layer2[0].bn3.eps == 1e-5
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        out = got.model(x).double()
    assert out.std() > 0.3  # logits of order 1, so 1e-4 is a tight bound
    # Every weight maps exactly: the same arithmetic with our ReLU placement agrees ...
    assert (out - chainer_forward(a, x, "cifar", ours_relu=True)).abs().max() <= 1e-4
    # ... and theirs does not, which is why the layout needs allow_inexact.
    assert (out - chainer_forward(a, x, "cifar")).abs().max() > 1e-2


def test_chainer_file_errors_name_the_file_and_array(tmp_path: Path) -> None:
    a = ilsvrc_arrays(c=2)
    np.savez(tmp_path / "pickled.npz", **a, extra=np.array([{"x": 1}], dtype=object))
    with pytest.raises(WeightsError, match=r"pickled.npz holds pickled Python objects"):
        import_chainer_npz(tmp_path / "pickled.npz")
    del a["resnext_block_1_1/conv_group_2/conv_group_1/conv/b"]
    np.savez(tmp_path / "missing.npz", **a)
    with pytest.raises(
        WeightsError,
        match=r"missing.npz: missing array resnext_block_1_1/"
        r"conv_group_2/conv_group_1/conv/b",
    ):
        import_chainer_npz(tmp_path / "missing.npz")
    a = ilsvrc_arrays(c=2)
    np.savez(tmp_path / "extra.npz", **a, **{"linear/linear/extra": np.zeros(3)})
    with pytest.raises(WeightsError, match=r"extra.npz: 1 arrays outside.*linear/linear/extra"):
        import_chainer_npz(tmp_path / "extra.npz")
    np.savez(tmp_path / "other.npz", w=np.zeros(3))
    with pytest.raises(WeightsError, match=r"other.npz is not a nutszebra/resnext Chainer file"):
        import_chainer_npz(tmp_path / "other.npz")


@pytest.mark.parametrize("fmt", [".pth", ".pth.tar", ".npz"])
def test_truncated_and_empty_files_name_the_file(tmp_path: Path, fmt: str) -> None:
    reader = {".pth": import_state_dict, ".pth.tar": import_lornatang, ".npz": import_chainer_npz}[
        fmt
    ]
    full = tmp_path / f"full{fmt}"
    if fmt == ".npz":
        np.savez_compressed(full, **ilsvrc_arrays(c=2))
    else:
        torch.save({"state_dict": tiny().state_dict(), "epoch": 1}, full)
    data = full.read_bytes()
    (tmp_path / f"cut{fmt}").write_bytes(data[: len(data) // 2])
    (tmp_path / f"empty{fmt}").write_bytes(b"")
    for name in (f"cut{fmt}", f"empty{fmt}"):
        with pytest.raises(WeightsError, match=re.escape(name)):
            reader(tmp_path / name)
