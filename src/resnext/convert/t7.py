"""Import the authors' Torch7 release (facebookresearch/ResNeXt, written by fb.resnet.torch).

The ``.t7`` file is read with the ``torchfile`` package (a pure reader: no Lua, no code
objects built). The saved ``nn.Sequential`` is walked module by module: depth, cardinality
and width are inferred from it, every tensor is mapped to torchvision's names, and anything
outside fb.resnet.torch's layout is refused naming the module. Module paths in messages are
Lua's 1-based indices: ``model[5][2][1]`` is ``model.modules[5].modules[2].modules[1]``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..checkpoint import load_checked
from ..data import IMAGENET_MEAN, IMAGENET_STD, Preprocess
from ..errors import WeightsError
from ..models import ResNeXt, arch_from_stages
from .base import Imported

CONV = ("cudnn.SpatialConvolution", "nn.SpatialConvolution", "nn.SpatialConvolutionMM")
BN = ("nn.SpatialBatchNormalization", "cudnn.SpatialBatchNormalization")
RELU = ("cudnn.ReLU", "nn.ReLU")
MAXPOOL = ("nn.SpatialMaxPooling", "cudnn.SpatialMaxPooling")
AVGPOOL = ("cudnn.SpatialAveragePooling", "nn.SpatialAveragePooling")

# The authors' eval preprocessing (datasets/imagenet.lua, transforms.lua): shorter side 256
# bicubic, centre crop 224 at fb.resnet.torch's ceil offset. CIFAR (datasets/cifar10.lua,
# cifar100.lua): normalisation only, its mean/std given in 0-255 units.
IMAGENET_EVAL = Preprocess(224, 256, "bicubic", IMAGENET_MEAN, IMAGENET_STD, crop_offset="ceil")
CIFAR_MEANSTD = {
    10: ((125.3, 123.0, 113.9), (63.0, 62.1, 66.7)),
    100: ((129.3, 124.1, 112.4), (68.2, 65.4, 70.4)),
}

TORCH_EPS = 1e-5  # nn.BatchNorm2d's eps, which the converted model keeps


def read_t7(path: str | Path) -> Any:
    """The object a Torch7 binary file holds, as torchfile returns it (tensors as numpy
    arrays, nn modules as ``TorchObject``); a file that cannot be read is a WeightsError."""
    p = Path(path)
    if not p.is_file():
        raise WeightsError(f"{str(p)!r} does not exist or is not a file")
    if p.stat().st_size == 0:
        raise WeightsError(f"{p.name}: the file is empty; expected a Torch7 .t7 file")
    import torchfile  # imported on use: only this format needs it

    try:
        return torchfile.load(str(p))
    except Exception as e:  # any failure of the parser means an unusable file
        raise WeightsError(
            f"{p.name}: not a readable Torch7 binary file, or a truncated one "
            f"({type(e).__name__}: {e}); check the download (torch.save's binary format "
            "is expected, not ascii)"
        ) from e


def _type(obj: Any) -> str:
    """The Torch class of a module, or what else the object is, in words."""
    name = getattr(obj, "torch_typename", None)
    if callable(name):
        return str(_text(name()))
    if isinstance(obj, np.ndarray):
        return f"a tensor of shape {tuple(obj.shape)}"
    if isinstance(obj, (dict, list)):
        return "a Lua table"
    return "nothing" if obj is None else f"a {type(obj).__name__}"


def _text(v: Any) -> str | None:
    return v.decode("utf8", "replace") if isinstance(v, bytes) else v


def _field(obj: Any, key: str) -> Any:
    fields = getattr(obj, "_obj", None)  # a TorchObject's table, keys as bytes
    return fields.get(key.encode(), fields.get(key)) if isinstance(fields, dict) else None


def _modules(obj: Any) -> list[Any]:
    kids = _field(obj, "modules")
    return kids if isinstance(kids, list) else []


def describe(obj: Any, depth: int = 2) -> str:
    """A short picture of a module tree: ``nn.Sequential{nn.Linear, nn.LogSoftMax}``."""
    kids = _modules(obj)
    if not kids or depth == 0:
        return _type(obj)
    inner = ", ".join(describe(k, depth - 1) for k in kids[:6])
    return f"{_type(obj)}{{{inner}{', ...' if len(kids) > 6 else ''}}}"


def _in_storage(a: np.ndarray) -> bool:
    """Whether every element of a torchfile tensor view lies inside its storage: torchfile
    reads a truncated storage short without a word and builds an as_strided view past it."""
    if a.size == 0:
        return True
    owner: Any = a
    while getattr(owner, "base", None) is not None:
        owner = owner.base
    if not isinstance(owner, np.ndarray) or owner is a:
        return True
    start = a.__array_interface__["data"][0]
    steps = [(n - 1) * s for n, s in zip(a.shape, a.strides, strict=True)]
    lo = start + sum(min(0, x) for x in steps)
    hi = start + sum(max(0, x) for x in steps) + a.itemsize
    base = owner.__array_interface__["data"][0]
    return base <= lo and hi <= base + owner.nbytes


class _Reader:
    """Walks one file's module tree, filling a torchvision-named state dict."""

    def __init__(self, file: str) -> None:
        self.file = file
        self.state: dict[str, torch.Tensor] = {}
        self.eps: dict[str, float] = {}
        self.folded = 0
        self.running_std = 0

    def fail(self, obj: Any, path: str, expected: str) -> WeightsError:
        return WeightsError(
            f"{self.file}: module {path} is {_type(obj)}; expected {expected} "
            "(fb.resnet.torch's ResNeXt layout, models/resnext.lua)"
        )

    def expect(self, obj: Any, path: str, kinds: tuple[str, ...], what: str) -> None:
        if _type(obj) not in kinds:
            raise self.fail(obj, path, what)

    def num(self, obj: Any, path: str, key: str, default: float | None = None) -> float:
        v = _field(obj, key)
        if v is None and default is not None:
            return default
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise WeightsError(f"{self.file}: {_type(obj)} {path} has no number {key!r}")
        return v

    def array(self, obj: Any, path: str, key: str, required: bool = True) -> np.ndarray | None:
        v = _field(obj, key)
        if v is None or (isinstance(v, np.ndarray) and v.size == 0 and not required):
            if required:
                raise WeightsError(f"{self.file}: {_type(obj)} {path} has no {key!r} tensor")
            return None
        if not isinstance(v, np.ndarray):
            raise WeightsError(f"{self.file}: {path}.{key} is {_type(v)}, expected a tensor")
        if not _in_storage(v):
            raise WeightsError(
                f"{self.file}: the file is truncated: {path}.{key} runs past the end of its "
                "storage; download it again"
            )
        return np.array(v, dtype=np.float64)  # float64 for the exact folding below

    def put(self, name: str, value: np.ndarray) -> None:
        self.state[name] = torch.from_numpy(value.astype(np.float32))

    # -- layers ------------------------------------------------------------------------
    def conv(
        self, obj: Any, path: str, name: str, k: int, stride: int, pad: int, what: str
    ) -> tuple[int, int, np.ndarray | None]:
        """A convolution of kernel k; returns (out, groups, bias or None)."""
        self.expect(obj, path, CONV, what)
        got = tuple(int(self.num(obj, path, f)) for f in ("kH", "kW", "dH", "dW"))
        got += tuple(int(self.num(obj, path, f, 0)) for f in ("padH", "padW"))
        dil = tuple(int(self.num(obj, path, f, 1)) for f in ("dilationH", "dilationW"))
        if got != (k, k, stride, stride, pad, pad) or dil != (1, 1):
            raise WeightsError(
                f"{self.file}: {path} is a {got[0]}x{got[1]} convolution with stride "
                f"{got[2]}x{got[3]}, padding {got[4]}x{got[5]}, dilation {dil[0]}x{dil[1]}; "
                f"expected {what}: {k}x{k}, stride {stride}, padding {pad}"
            )
        w = self.array(obj, path, "weight")
        n_out = int(self.num(obj, path, "nOutputPlane", w.shape[0]))
        per_group = w.size // max(n_out * k * k, 1)
        if per_group == 0 or w.size != n_out * per_group * k * k or w.shape[2:] not in [(), (k, k)]:
            raise WeightsError(
                f"{self.file}: {path}.weight has shape {w.shape}, not that of a {k}x{k} "
                f"convolution with {n_out} outputs"
            )
        # nn.SpatialConvolutionMM keeps (nOut, nIn*kH*kW): the same memory as 4-D.
        w = w.reshape(n_out, per_group, k, k)
        n_in = int(self.num(obj, path, "nInputPlane", per_group))
        groups = int(self.num(obj, path, "groups", n_in // per_group))
        if groups * per_group != n_in:
            raise WeightsError(
                f"{self.file}: {path} has {n_in} inputs and {groups} groups but its weight "
                f"has {per_group} inputs a group ({w.shape})"
            )
        self.put(f"{name}.weight", w)
        return n_out, groups, self.array(obj, path, "bias", required=False)

    def bn(self, obj: Any, path: str, name: str, conv_bias: np.ndarray | None) -> None:
        """A batch norm; a preceding conv's bias is folded into its running mean."""
        self.expect(obj, path, BN, "a batch normalisation")
        eps = float(self.num(obj, path, "eps"))
        mean = self.array(obj, path, "running_mean")
        var = self.array(obj, path, "running_var", required=False)
        if var is None:
            std = self.array(obj, path, "running_std", required=False)
            version = getattr(obj, "_version_number", 0)
            if std is None or version >= 2:
                raise WeightsError(
                    f"{self.file}: {_type(obj)} {path} has no running_var (nor a version-1 "
                    "running_std); its statistics cannot be read"
                )
            # nn.BatchNormalization before version 2 kept 1/sqrt(var + eps) (its read()).
            var = std**-2.0 - eps
            self.running_std += 1
        n = mean.size
        weight = self.array(obj, path, "weight", required=False)
        bias = self.array(obj, path, "bias", required=False)
        if conv_bias is not None:
            # BN(conv(x) + b) == BN'(conv(x)) with running_mean' = running_mean - b.
            if conv_bias.size != n:
                raise WeightsError(f"{self.file}: the bias before {path} has {conv_bias.size}")
            mean = mean - conv_bias
            self.folded += 1
        # affine=false: no weight/bias, i.e. the identity scale and shift.
        self.put(f"{name}.weight", np.ones(n) if weight is None else weight)
        self.put(f"{name}.bias", np.zeros(n) if bias is None else bias)
        self.put(f"{name}.running_mean", mean)
        # sqrt(var + eps) == sqrt(var' + 1e-5) with var' = var + eps - 1e-5: the model keeps
        # PyTorch's eps, so a saved converted file (which stores no eps) computes the same.
        self.put(f"{name}.running_var", np.asarray(var, dtype=np.float64) + (eps - TORCH_EPS))
        self.state[f"{name}.num_batches_tracked"] = torch.tensor(0)
        self.eps[name] = eps

    def relu(self, obj: Any, path: str) -> None:  # nn.ReLU is nn.Threshold(0, 0)
        self.expect(obj, path, RELU, "a ReLU")
        if self.num(obj, path, "threshold", 0) != 0 or self.num(obj, path, "val", 0) != 0:
            raise WeightsError(f"{self.file}: {path} is a threshold other than ReLU's 0")

    def seq(self, obj: Any, path: str, n: int | None, what: str) -> list[Any]:
        self.expect(obj, path, ("nn.Sequential",), what)
        kids = _modules(obj)
        if n is not None and len(kids) != n:
            raise WeightsError(
                f"{self.file}: module {path} is {describe(obj, 1)}; expected {what} of {n} modules"
            )
        return kids

    # -- the network --------------------------------------------------------------------
    def block(
        self, obj: Any, path: str, name: str, in_ch: int, stride: int
    ) -> tuple[int, int, int]:
        """One bottleneck (form C); returns (out channels, cardinality, grouped width)."""
        what = "a block nn.Sequential{nn.ConcatTable, nn.CAddTable, ReLU}"
        cat, add, relu = self.seq(obj, path, 3, what)
        self.expect(cat, f"{path}[1]", ("nn.ConcatTable",), "an nn.ConcatTable{branch, shortcut}")
        self.expect(add, f"{path}[2]", ("nn.CAddTable",), "an nn.CAddTable")
        self.relu(relu, f"{path}[3]")
        kids = _modules(cat)
        if len(kids) != 2:
            raise self.fail(cat, f"{path}[1]", "an nn.ConcatTable of a branch and a shortcut")
        p = f"{path}[1][1]"
        first = _modules(kids[0])[:1]
        if first and _type(first[0]) == "nn.ConcatTable":
            raise WeightsError(
                f"{self.file}: {p} is a form-B block (C paths in an nn.ConcatTable, then "
                "nn.JoinTable); only form C (one grouped convolution) is imported"
            )
        branch = self.seq(
            kids[0], p, 8, "the branch nn.Sequential{1x1, BN, ReLU, 3x3 group, BN, ReLU, 1x1, BN}"
        )
        width, _, b = self.conv(branch[0], f"{p}[1]", f"{name}.conv1", 1, 1, 0, "a 1x1 reduce")
        self.bn(branch[1], f"{p}[2]", f"{name}.bn1", b)
        self.relu(branch[2], f"{p}[3]")
        grouped = "the grouped 3x3 convolution"
        _, groups, b = self.conv(branch[3], f"{p}[4]", f"{name}.conv2", 3, stride, 1, grouped)
        self.bn(branch[4], f"{p}[5]", f"{name}.bn2", b)
        self.relu(branch[5], f"{p}[6]")
        out, _, b = self.conv(branch[6], f"{p}[7]", f"{name}.conv3", 1, 1, 0, "a 1x1 expand")
        self.bn(branch[7], f"{p}[8]", f"{name}.bn3", b)
        s = f"{path}[1][2]"
        project = stride != 1 or in_ch != out
        if _type(kids[1]) == "nn.Identity" and not project:
            return out, groups, width
        if not project or _type(kids[1]) != "nn.Sequential":
            expected = "an nn.Sequential{1x1 conv, BN} projection (the shape changes)"
            if not project:
                expected = "an nn.Identity shortcut (shortcut type B; type C projects everywhere)"
            raise self.fail(kids[1], s, expected)
        conv, bn = self.seq(kids[1], s, 2, "a projection nn.Sequential{1x1 conv, BN}")
        _, _, b = self.conv(conv, f"{s}[1]", f"{name}.downsample.0", 1, stride, 0, "a 1x1")
        self.bn(bn, f"{s}[2]", f"{name}.downsample.1", b)
        return out, groups, width

    def network(self, root: Any) -> dict[str, Any]:
        """The whole tree; returns the ResNeXt keyword arguments."""
        kids = _modules(root)
        if _type(root) != "nn.Sequential" or not kids or _type(kids[0]) not in CONV:
            raise WeightsError(
                f"{self.file}: not a ResNeXt in fb.resnet.torch's layout: it holds "
                f"{describe(root)}; expected an nn.Sequential starting with a convolution "
                "(stem), then stages of blocks, average pooling, nn.View and nn.Linear"
            )
        taken = 0

        def take() -> tuple[Any, str]:  # the next top-level module and its path
            nonlocal taken
            taken += 1
            return kids[taken - 1] if taken <= len(kids) else None, f"model[{taken}]"

        m, path = take()
        family = "imagenet" if self.num(m, path, "kW") == 7 else "cifar"
        k, stride, pad = (7, 2, 3) if family == "imagenet" else (3, 1, 1)
        stem = "the 7x7/2 (ImageNet) or 3x3/1 (CIFAR) stem"
        stem_width, _, b = self.conv(m, path, "conv1", k, stride, pad, stem)
        self.bn(*take(), "bn1", b)
        self.relu(*take())
        if family == "imagenet":
            self.maxpool(*take())
        blocks: list[int] = []
        widths: list[int] = []
        cardinality = width = 0
        in_ch = stem_width
        for s in range(4 if family == "imagenet" else 3):
            m, path = take()
            stage = self.seq(m, path, None, f"stage {s + 1} (an nn.Sequential of blocks)")
            if not stage:
                raise self.fail(m, path, f"stage {s + 1} holding at least one block")
            for j, blk in enumerate(stage):
                stride = 2 if s > 0 and j == 0 else 1
                name, at = f"layer{s + 1}.{j}", f"{path}[{j + 1}]"
                out, groups, grouped = self.block(blk, at, name, in_ch, stride)
                if s == 0 and j == 0:
                    cardinality, width = groups, grouped // groups
                if groups != cardinality or grouped != cardinality * width * 2**s:
                    raise WeightsError(
                        f"{self.file}: block {at} has a {grouped}-wide grouped conv in {groups} "
                        f"groups; a ResNeXt {cardinality}x{width}d has "
                        f"{cardinality * width * 2**s} in {cardinality} there (d doubles a stage)"
                    )
                in_ch = out
            blocks.append(len(stage))
            widths.append(in_ch)
        pool = self.avgpool(*take())
        self.view(*take(), in_ch)
        num_classes = self.linear(*take())
        if taken < len(kids):
            raise self.fail(*take(), "nothing after the nn.Linear")
        try:
            shape = arch_from_stages(family, blocks, widths)
        except ValueError as e:
            raise WeightsError(f"{self.file}: {e}") from e
        return {
            **shape,
            "cardinality": cardinality,
            "bottleneck_width": width,
            "num_classes": num_classes,
            "in_chans": int(self.state["conv1.weight"].shape[1]),
            "stem_width": stem_width,
            "_pool": pool,
        }

    def maxpool(self, obj: Any, path: str) -> None:
        self.expect(obj, path, MAXPOOL, "nn.SpatialMaxPooling(3,3,2,2,1,1)")
        got = [int(self.num(obj, path, f, 0)) for f in ("kW", "kH", "dW", "dH", "padW", "padH")]
        if got != [3, 3, 2, 2, 1, 1] or _field(obj, "ceil_mode"):
            raise WeightsError(
                f"{self.file}: {path} is a max pooling {got}"
                f"{' in ceil mode' if _field(obj, 'ceil_mode') else ''}; expected "
                "SpatialMaxPooling(3,3,2,2,1,1) in floor mode"
            )

    def avgpool(self, obj: Any, path: str) -> int:
        self.expect(obj, path, AVGPOOL, "the head's SpatialAveragePooling(k,k,1,1)")
        kw, kh, dw, dh = (int(self.num(obj, path, f)) for f in ("kW", "kH", "dW", "dH"))
        pads = (int(self.num(obj, path, f, 0)) for f in ("padW", "padH"))
        if kw != kh or (dw, dh) != (1, 1) or any(pads):
            raise WeightsError(
                f"{self.file}: {path} is an average pooling {kw}x{kh}/{dw}x{dh} with padding; "
                "expected a square kernel, stride 1, no padding (a global pool at its input size)"
            )
        return kw

    def view(self, obj: Any, path: str, features: int) -> None:
        self.expect(obj, path, ("nn.View",), f"nn.View({features})")
        size = _field(obj, "size")
        n = _field(obj, "numElements")
        if n is None and isinstance(size, np.ndarray) and size.size:
            n = int(np.prod(size))
        if n != features:
            raise WeightsError(f"{self.file}: {path} is nn.View({n}); expected {features}")

    def linear(self, obj: Any, path: str) -> int:
        self.expect(obj, path, ("nn.Linear",), "the classifier nn.Linear")
        w = self.array(obj, path, "weight")
        b = self.array(obj, path, "bias", required=False)
        if w.ndim != 2:
            raise WeightsError(f"{self.file}: {path}.weight has shape {w.shape}, not 2-D")
        self.put("fc.weight", w)
        self.put("fc.bias", np.zeros(w.shape[0]) if b is None else b)
        return int(w.shape[0])


def import_t7(path: str | Path) -> Imported:
    """Read a ResNeXt saved by fb.resnet.torch / facebookresearch/ResNeXt (``.t7``).

    The model computes what the Torch7 one computes: same pooling, each BN's eps (folded
    into its running variance), a
    conv bias folded into the following BN's running mean, same classifier. The head's
    ``SpatialAveragePooling(k,k,1,1)`` is a global average at the input size the file was
    built for (224 for the release), which is what our adaptive pool computes there.
    """
    p = Path(path)
    root = read_t7(p)
    reader = _Reader(p.name)
    arch = reader.network(root)
    pool = arch.pop("_pool")
    model = ResNeXt(**arch)
    load_checked(model, reader.state)
    model.eval()
    family = arch["family"]
    if family == "imagenet":
        preprocess = IMAGENET_EVAL
    else:
        mean, std = CIFAR_MEANSTD[100 if arch["num_classes"] == 100 else 10]
        preprocess = Preprocess(
            32, None, "bilinear", tuple(m / 255 for m in mean), tuple(s / 255 for s in std)
        )
    return Imported(
        model=model,
        preprocess=preprocess,
        classes=None,
        source={
            "format": "t7",
            "file": p.name,
            "tensor_type": _text(_field(root, "_type")),  # e.g. torch.CudaTensor
            "biases_folded": reader.folded,
            "running_std_converted": reader.running_std,
            "bn_eps": sorted(set(reader.eps.values())),
            "head_pool": pool,
            "input_size": pool * (32 if family == "imagenet" else 4),
        },
    )
