"""The Torch7 importer: fb.resnet.torch-layout files convert exactly; anything else is refused.

The files are written by ``t7write`` in models/resnext.lua's layout, with random weights,
BN statistics and conv biases; the converted model's output is compared with a forward pass
written here from the same arrays, following Torch7's module semantics (not our model).
Real Lua-written files in ../shared/testdata/t7/ check the reader side.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchfile

import t7write as tw
from helpers import REPO
from resnext.convert import Imported
from resnext.convert.t7 import _Reader, import_t7, read_t7
from resnext.data import IMAGENET_MEAN, IMAGENET_STD, Preprocess
from resnext.errors import WeightsError
from resnext.models import create_model

T7_DIR = REPO.parent / "shared" / "testdata" / "t7"
needs_real_files = pytest.mark.skipif(
    not T7_DIR.is_dir(), reason=f"{T7_DIR} (real Lua-written .t7 files) is absent in this clone"
)
TOL = 1e-4  # max abs difference of the logits (float32 model vs float64 reference)
CONVS = ("cudnn.SpatialConvolution", "nn.SpatialConvolution", "nn.SpatialConvolutionMM")
SMALL = {
    "blocks": (2, 2, 2, 2),
    "cardinality": 2,
    "width": 4,
    "widths": (32, 64, 128, 256),
    "stem": 16,
    "num_classes": 10,
    "pool": 2,
}  # input 64: final map 2x2
AUTHORS_EVAL = Preprocess(224, 256, "bicubic", IMAGENET_MEAN, IMAGENET_STD, crop_offset="ceil")


def torch7_forward(m: tw.Obj, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
    """What Torch7 computes for module ``m`` (evaluate mode), in float64."""
    f, t = m.fields, m.typename

    def arr(key: str) -> torch.Tensor | None:
        v = f.get(key)
        return None if v is None else torch.from_numpy(v.array.astype(np.float64))

    if t == "nn.Sequential":
        for c in f["modules"]:
            x = torch7_forward(c, x)
        return x
    if t == "nn.ConcatTable":
        return [torch7_forward(c, x) for c in f["modules"]]
    if t == "nn.CAddTable":
        return torch.stack(x).sum(0)
    if t == "nn.Identity":
        return x
    if t in CONVS:
        groups = f.get("groups", 1)
        w = arr("weight").reshape(f["nOutputPlane"], f["nInputPlane"] // groups, f["kH"], f["kW"])
        return F.conv2d(x, w, arr("bias"), (f["dH"], f["dW"]), (f["padH"], f["padW"]), 1, groups)
    if t.endswith("SpatialBatchNormalization"):
        if "running_std" in f:  # version 1: the inverse standard deviation itself
            y = (x - arr("running_mean")[:, None, None]) * arr("running_std")[:, None, None]
        else:
            var = arr("running_var")[:, None, None]
            y = (x - arr("running_mean")[:, None, None]) / torch.sqrt(var + f["eps"])
        if f.get("weight") is not None:
            y = y * arr("weight")[:, None, None] + arr("bias")[:, None, None]
        return y
    if t.endswith("ReLU"):
        return torch.where(x > f.get("threshold", 0), x, torch.zeros_like(x) + f.get("val", 0))
    if t.endswith("SpatialMaxPooling"):
        k, s, p = (f["kH"], f["kW"]), (f["dH"], f["dW"]), (f["padH"], f["padW"])
        return F.max_pool2d(x, k, s, p, ceil_mode=f["ceil_mode"])
    if t.endswith("SpatialAveragePooling"):
        k, s, p = (f["kH"], f["kW"]), (f["dH"], f["dW"]), (f["padH"], f["padW"])
        return F.avg_pool2d(x, k, s, p, f["ceil_mode"], f["count_include_pad"])
    if t == "nn.View":
        return x.reshape(-1, f["numElements"])
    if t == "nn.Linear":
        return F.linear(x, arr("weight"), arr("bias"))
    raise NotImplementedError(t)


def convs_with_bias(net: tw.Obj) -> int:
    return sum(m.typename in CONVS and m["bias"] is not None for m in tw.walk(net))


def max_diff(imported: Imported, net: tw.Obj, size: int, batch: int = 2) -> float:
    """The max abs difference of the imported model's logits from Torch7's on a batch."""
    x = torch.from_numpy(np.random.default_rng(1).normal(0, 1, (batch, 3, size, size)))
    with torch.no_grad():
        ours = imported.model(x.float()).double()
    ref = torch7_forward(net, x)
    assert ref.shape == ours.shape
    assert ref.std() > 0.3  # a network whose logits vary: the comparison means something
    return (ours - ref).abs().max().item()


def small_net(m: tw.Modules | None = None, seed: int = 0, **kw: object) -> tw.Obj:
    args = {**SMALL, "conv_bias": lambda i: i % 2 == 0, **kw}
    return tw.resnext(m or tw.Modules(), np.random.default_rng(seed), **args)  # type: ignore[arg-type]


def test_small_imagenet_layout_converts_exactly(tmp_path: Path) -> None:
    net = small_net()
    bns = [b for b in tw.walk(net) if b.typename.endswith("BatchNormalization")]
    for b in bns[::3]:
        b.fields["eps"] = 1e-3  # read per module, not assumed
    imported = import_t7(tw.save(tmp_path / "small.t7", net))
    arch = imported.model.arch
    assert (arch.depth, arch.cardinality, arch.bottleneck_width) == (26, 2, 4)
    assert arch.family == "imagenet"
    assert (arch.stem_width, arch.widths, arch.num_classes) == (16, (32, 64, 128, 256), 10)
    assert imported.source["biases_folded"] == convs_with_bias(net) == 15
    assert imported.source["file"] == "small.t7" and imported.source["input_size"] == 64
    assert imported.source["tensor_type"] == "torch.CudaTensor"
    # Each BN's eps is folded into its running variance; the model keeps PyTorch's 1e-5, so
    # the converted file (which stores no eps) computes the same after a save.
    assert imported.model.bn1.eps == imported.model.layer1[0].bn1.eps == 1e-5
    assert imported.source["bn_eps"] == [1e-5, 1e-3]
    assert imported.preprocess == AUTHORS_EVAL and imported.classes is None
    diff = max_diff(imported, net, 64)
    assert diff <= TOL, diff  # measured 1.5e-6


def _bn_pairs(net: tw.Obj, imported: Imported) -> list[tuple[tw.Obj, torch.nn.BatchNorm2d]]:
    """Torch7's BN modules beside ours, in network order; the pairing is checked by the
    affine weights, which the converter copies unchanged."""
    theirs = [b for b in tw.walk(net) if b.typename.endswith("BatchNormalization")]
    ours = [m for m in imported.model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert len(theirs) == len(ours) > 0
    for t, o in zip(theirs, ours, strict=True):
        if t.fields.get("weight") is not None:
            w = torch.from_numpy(t.fields["weight"].array.astype(np.float32))
            assert torch.equal(o.weight.detach(), w)
    return list(zip(theirs, ours, strict=True))


def test_bn_eps_is_folded_into_each_running_var(tmp_path: Path) -> None:
    """Each converted running_var is Torch7's var + its module's eps - 1e-5 (PyTorch's eps,
    which the model keeps), checked array by array, not through the logits' tolerance; for
    version-1 modules var is 1/running_std^2 - eps first."""
    net = small_net()
    epss = (1e-5, 1e-3, 2e-5, 1e-2)
    for i, b in enumerate(b for b in tw.walk(net) if b.typename.endswith("BatchNormalization")):
        b.fields["eps"] = epss[i % len(epss)]
    imported = import_t7(tw.save(tmp_path / "eps.t7", net))
    for t, o in _bn_pairs(net, imported):
        var = torch.from_numpy(t.fields["running_var"].array.astype(np.float64))
        want = (var + t.fields["eps"] - 1e-5).float()
        assert o.eps == 1e-5
        assert torch.allclose(o.running_var, want, rtol=1e-6, atol=0), t.fields["eps"]

    m = tw.Modules("Double", conv="nn.SpatialConvolutionMM", relu="nn.ReLU", bn_version=1)
    old = small_net(m, cardinality=1, width=8, conv_bias=lambda i: True)
    for i, b in enumerate(b for b in tw.walk(old) if b.typename.endswith("BatchNormalization")):
        b.fields["eps"] = epss[i % len(epss)]
    imported = import_t7(tw.save(tmp_path / "old.t7", old))
    for t, o in _bn_pairs(old, imported):
        std = torch.from_numpy(t.fields["running_std"].array.astype(np.float64))
        want = (std**-2 - 1e-5).float()  # (1/std^2 - eps) + eps - 1e-5
        assert torch.allclose(o.running_var, want, rtol=1e-6, atol=0), t.fields["eps"]


def test_cifar_layout_converts_exactly(tmp_path: Path) -> None:
    net = small_net(blocks=(3, 3, 3), widths=(16, 32, 64), family="cifar", num_classes=100, pool=4)
    bns = [b for b in tw.walk(net) if b.typename.endswith("BatchNormalization")]
    for b in bns[1::4]:  # SpatialBatchNormalization(n, eps, momentum, false): no weight, bias
        b.fields.update(affine=False, weight=None, bias=None)
    imported = import_t7(tw.save(tmp_path / "cifar.t7", net))
    assert torch.equal(imported.model.layer1[0].bn1.weight, torch.ones(8))
    arch = imported.model.arch
    assert (arch.depth, arch.family, arch.cardinality, arch.bottleneck_width) == (29, "cifar", 2, 4)
    # CIFAR-100's mean/std of datasets/cifar100.lua, given there in 0-255 units
    assert imported.preprocess.mean == pytest.approx((129.3 / 255, 124.1 / 255, 112.4 / 255))
    assert imported.source["input_size"] == 16
    diff = max_diff(imported, net, 16)
    assert diff <= TOL, diff  # measured 3.9e-7


def test_old_format_mm_weights_running_std_double_storages(tmp_path: Path) -> None:
    """A ResNet (C=1: nn had no grouped convolution) as older Torch7 saved it:
    nn.SpatialConvolutionMM keeps 2-D weights, BN before version 2 kept running_std =
    1/sqrt(var + eps), DoubleTensor storages, a bias on every conv: all read, all folded."""
    m = tw.Modules("Double", conv="nn.SpatialConvolutionMM", relu="nn.ReLU", bn_version=1)
    net = small_net(m, cardinality=1, width=8, conv_bias=lambda i: True)
    assert net.get(1)["weight"].array.ndim == 2
    imported = import_t7(tw.save(tmp_path / "old.t7", net))
    assert (imported.model.arch.cardinality, imported.model.arch.bottleneck_width) == (1, 8)
    n_bn = sum(b.typename.endswith("BatchNormalization") for b in tw.walk(net))
    assert imported.source["running_std_converted"] == n_bn
    assert imported.source["biases_folded"] == convs_with_bias(net) == n_bn
    diff = max_diff(imported, net, 64)
    assert diff <= TOL, diff  # measured 2.2e-6


@pytest.mark.slow
def test_full_resnext50_32x4d_converts_exactly(tmp_path: Path) -> None:
    """The release's resnext_50_32x4d layout, every weight a view into one CudaStorage
    (getParameters), no conv biases (cuDNN >= 4): same architecture, every tensor mapped."""
    net = tw.resnext(tw.Modules("Cuda"), np.random.default_rng(0))
    tw.flatten_parameters(net)
    imported = import_t7(tw.save(tmp_path / "resnext_50_32x4d.t7", net))
    model = imported.model
    assert model.arch == create_model("resnext50_32x4d").arch
    assert imported.source["biases_folded"] == 0 and imported.source["input_size"] == 224
    stage3_block6 = net.get(7).get(6).get(1)
    pairs = {
        "conv1.weight": net.get(1)["weight"],
        "bn1.running_var": net.get(2)["running_var"],
        "layer3.5.conv2.weight": stage3_block6.get(1).get(4)["weight"],
        "layer3.5.bn3.weight": stage3_block6.get(1).get(8)["weight"],
        "layer4.0.downsample.0.weight": net.get(8).get(1).get(1).get(2).get(1)["weight"],
        "fc.weight": net.get(11)["weight"],
    }
    state = model.state_dict()
    for key, tensor in pairs.items():
        assert torch.equal(state[key], torch.from_numpy(tensor.array)), key
    assert model.layer3[5].conv2.groups == 32
    diff = max_diff(imported, net, 224, batch=1)
    assert diff <= TOL, diff  # measured 9.5e-6 (logits' std 6)


def _dropout(net: tw.Obj, m: tw.Modules) -> None:
    net.get(5).get(1).get(1).get(1).fields["modules"][2] = m.module("nn.Dropout", p=0.5)


def _dilated(net: tw.Obj, m: tw.Modules) -> None:
    net.get(6).get(1).get(1).get(1).get(4).typename = "nn.SpatialDilatedConvolution"


def _inserted(net: tw.Obj, m: tw.Modules) -> None:
    net.get(5).get(2).get(1).get(1).fields["modules"].insert(4, m.module("nn.Dropout", p=0.2))


def _softmax(net: tw.Obj, m: tw.Modules) -> None:
    net.fields["modules"].append(m.module("nn.SoftMax"))


def _ceil_pool(net: tw.Obj, m: tw.Modules) -> None:
    net.get(4).fields["ceil_mode"] = True


def _shortcut_c(net: tw.Obj, m: tw.Modules) -> None:
    block = net.get(5).get(2).get(1)
    w = np.zeros((32, 32, 1, 1))
    block.fields["modules"][1] = m.seq(
        m.conv(w), m.bn(np.ones(32), np.zeros(32), np.zeros(32), np.ones(32))
    )


def _stride_on_1x1(net: tw.Obj, m: tw.Modules) -> None:
    branch = net.get(6).get(1).get(1).get(1)
    branch.get(1).fields.update(dW=2, dH=2)
    branch.get(4).fields.update(dW=1, dH=1)


def _form_b(net: tw.Obj, m: tw.Modules) -> None:
    block = net.get(5).get(1).get(1)
    paths = [m.seq(m.identity()) for _ in range(2)]
    block.fields["modules"][0] = m.seq(m.concat(*paths), m.module("nn.JoinTable", dimension=2))


def _no_running_var(net: tw.Obj, m: tw.Modules) -> None:
    bn = net.get(2)
    bn.fields["running_std"] = bn.fields.pop("running_var")  # but a version-2 module


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (_dropout, r"module model\[5\]\[1\]\[1\]\[1\]\[3\] is nn.Dropout; expected a ReLU"),
        (
            _dilated,
            r"model\[6\]\[1\]\[1\]\[1\]\[4\] is nn.SpatialDilatedConvolution; expected "
            r"the grouped 3x3",
        ),
        (
            _inserted,
            r"model\[5\]\[2\]\[1\]\[1\] is nn.Sequential\{.*nn.Dropout.*\}; expected "
            r"the branch",
        ),
        (_softmax, r"model\[12\] is nn.SoftMax; expected nothing after the nn.Linear"),
        (_ceil_pool, r"model\[4\] is a max pooling .* in ceil mode"),
        (_shortcut_c, r"model\[5\]\[2\]\[1\]\[2\] is nn.Sequential; expected an nn.Identity"),
        (_stride_on_1x1, r"model\[6\]\[1\]\[1\]\[1\]\[1\] is a 1x1 convolution with stride 2x2"),
        (_form_b, r"model\[5\]\[1\]\[1\]\[1\] is a form-B block"),
        (_no_running_var, r"nn.SpatialBatchNormalization model\[2\] has no running_var"),
    ],
)
def test_unknown_modules_and_arrangements_are_refused(tmp_path: Path, mutate, message) -> None:
    m = tw.Modules()
    net = small_net(m)
    mutate(net, m)
    with pytest.raises(WeightsError, match=r"^bad\.t7: .*" + message):
        import_t7(tw.save(tmp_path / "bad.t7", net))


def test_a_depth_our_model_does_not_build_is_refused(tmp_path: Path) -> None:
    net = small_net(blocks=(1, 1, 1, 1))
    with pytest.raises(WeightsError, match=r"stages hold \[1, 1, 1, 1\] blocks.*26: \[2, 2"):
        import_t7(tw.save(tmp_path / "shallow.t7", net))


def test_truncated_empty_and_foreign_files_name_the_file(tmp_path: Path) -> None:
    data = tw.dumps(small_net())
    # The last bytes hold the classifier's bias storage: cut there, torchfile reads the
    # storage short without complaint and views past its end; the importer must notice.
    cut = tmp_path / "cut_in_last_storage.t7"
    cut.write_bytes(data[:-4])
    torchfile.load(str(cut))  # no error from the reader itself
    with pytest.raises(WeightsError, match=r"^cut_in_last_storage\.t7: the file is truncated"):
        import_t7(cut)
    cases = {
        "empty.t7": (b"", "the file is empty"),
        "three_bytes.t7": (data[:3], "not a readable Torch7 binary file, or a truncated one"),
        "half.t7": (data[: len(data) // 2], "not a readable Torch7 binary file, or a truncated"),
        "text.t7": (b"th> torch.save('x.t7', model, 'ascii')\n" * 4, "not a readable Torch7"),
    }
    for name, (content, message) in cases.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(WeightsError, match=f"^{re.escape(name)}: {message}"):
            import_t7(tmp_path / name)
    with pytest.raises(WeightsError, match=r"missing\.t7' does not exist"):
        import_t7(tmp_path / "missing.t7")


def lua_modules(obj: Any) -> list[Any]:
    """A module tree as torchfile reads it, depth first."""
    return [obj, *(m for c in (obj.modules or []) for m in lua_modules(c))]


@needs_real_files
def test_reader_reads_real_lua_written_files() -> None:
    net = read_t7(T7_DIR / "lua-cnn" / "bumper-detection-cnn_model.net")
    leaves = [
        m
        for m in lua_modules(net)
        if m.torch_typename() in (b"nn.SpatialConvolution", b"nn.Linear")
    ]
    shapes = [m.weight.shape for m in leaves]
    assert shapes == [(16, 3, 5, 5), (16, 16, 12, 12), (32, 16, 4, 4), (2, 1568)]
    assert all(m.weight.dtype == np.float32 for m in leaves)  # CudaTensor storages
    assert net._type == b"torch.CudaTensor"
    # the importer's own tensor path (storage bounds, layout) on a real CudaTensor conv
    reader = _Reader("bumper")
    out, groups, bias = reader.conv(leaves[0], "model[1][1]", "c", 5, 1, 0, "a 5x5 conv")
    assert (out, groups, bias.shape) == (16, 1, (16,))
    assert torch.equal(reader.state["c.weight"], torch.from_numpy(leaves[0].weight))
    linear = read_t7(T7_DIR / "cpp-torch" / "net.t7")
    x, y = (read_t7(T7_DIR / "cpp-torch" / f) for f in ("x.t7", "y.t7"))
    assert np.allclose(linear.weight @ x + linear.bias, y) and np.allclose(y, [12, 13])


@needs_real_files
def test_real_files_are_refused_as_not_a_resnext() -> None:
    expect = {
        "lua-cnn/bumper-detection-cnn_model.net": r"nn.Sequential\{nn.Sequential\{"
        r"nn.SpatialConvolution, nn.ReLU, nn.SpatialMaxPooling",
        "cpp-torch/net.t7": r"it holds nn.Linear;",
        "mocha/net.t7": r"it holds nn.Sequential\{nn.Linear\};",
        "python-torchfile/floattensor.t7": r"it holds a tensor of shape \(2, 3, 4\)",
    }
    for rel, found in expect.items():
        name = re.escape(Path(rel).name)
        with pytest.raises(WeightsError, match=f"^{name}: not a ResNeXt .*{found}"):
            import_t7(T7_DIR / rel)
    files = sorted(p for p in T7_DIR.rglob("*") if p.suffix in (".t7", ".net"))
    assert len(files) >= 10
    for p in files:  # whatever a file holds: a clear refusal naming it, never a crash
        with pytest.raises(WeightsError, match=f"^{re.escape(p.name)}: "):
            import_t7(p)
