"""A Torch7 binary writer for the subset the tests need, and fb.resnet.torch's module layout.

No ``.t7`` of the authors' release can be downloaded in the tests, so they write their own:
``torch.save``'s binary format as torch7's ``File.lua`` and ``generic/Tensor.c`` write it
(little-endian, 4-byte ints, 8-byte longs, doubles for numbers). Every value is a type tag
(nil 0, number 1, string 2, table 3, torch object 4, boolean 5); tables and torch objects
carry an object index, and an object met again is written as that index alone. A torch
object is ``"V <version>"``, its class name, then its fields as a table; a tensor is its
dimensions, sizes, strides, 1-based storage offset and storage; a storage is its length and
raw data. Modules are built with the fields fb.resnet.torch's saved models hold
(models/resnext.lua, after ``clearState``): CudaTensor storages, empty buffers, ``_type``.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

NIL, NUMBER, STRING, TABLE, TORCH, BOOLEAN = range(6)
DTYPES = {"Float": np.float32, "Cuda": np.float32, "Double": np.float64, "Long": np.int64}


class Storage:
    """A torch.<kind>Storage: a flat array, written once however many tensors view it."""

    def __init__(self, data: np.ndarray, kind: str) -> None:
        self.data = np.ascontiguousarray(data, dtype=DTYPES[kind])
        self.typename = f"torch.{kind}Storage"


class Tensor:
    """A torch.<kind>Tensor viewing ``storage`` from ``offset`` (its own storage by default)."""

    def __init__(self, array: np.ndarray, kind: str = "Cuda") -> None:
        self.array = np.ascontiguousarray(array, dtype=DTYPES[kind])
        self.kind = kind
        self.typename = f"torch.{kind}Tensor"
        self.storage: Storage | None = (
            Storage(self.array.ravel(), kind) if self.array.size else None
        )
        self.offset = 0


class Obj:
    """A Torch class instance (an nn/cudnn module): class name, fields, class version."""

    def __init__(self, typename: str, fields: dict[str, Any], version: int = 1) -> None:
        self.typename = typename
        self.fields = fields
        self.version = version

    def __getitem__(self, key: str) -> Any:
        return self.fields[key]

    def get(self, i: int) -> Obj:
        """The i-th child module, 1-based like Lua's ``module:get(i)``."""
        return self.fields["modules"][i - 1]


class _Writer:
    def __init__(self) -> None:
        self.out = bytearray()
        self.index: dict[int, int] = {}
        self.keep: list[Any] = []  # keeps ids unique while writing

    def int(self, v: int) -> None:
        self.out += struct.pack("<i", v)

    def long(self, v: int) -> None:
        self.out += struct.pack("<q", v)

    def string(self, s: str) -> None:
        b = s.encode()
        self.int(len(b))
        self.out += b

    def ref(self, obj: Any, tag: int) -> bool:
        """Write the tag and object index; True if the object was written before."""
        self.int(tag)
        seen = id(obj) in self.index
        if not seen:
            self.index[id(obj)] = len(self.index) + 1
            self.keep.append(obj)
        self.int(self.index[id(obj)])
        return seen

    def obj(self, v: Any) -> None:
        if v is None:
            self.int(NIL)
        elif isinstance(v, bool):
            self.int(BOOLEAN)
            self.int(1 if v else 0)
        elif isinstance(v, (int, float)):
            self.int(NUMBER)
            self.out += struct.pack("<d", float(v))
        elif isinstance(v, str):
            self.int(STRING)
            self.string(v)
        elif isinstance(v, np.ndarray):
            raise TypeError("wrap arrays in Tensor or Storage to choose their torch type")
        elif isinstance(v, (dict, list)):
            if self.ref(v, TABLE):
                return
            items = v.items() if isinstance(v, dict) else enumerate(v, start=1)
            items = [(k, x) for k, x in items if x is not None]  # Lua tables hold no nil
            self.int(len(items))
            for k, x in items:
                self.obj(k)
                self.obj(x)
        elif isinstance(v, (Obj, Tensor, Storage)):
            if self.ref(v, TORCH):
                return
            self.string(f"V {v.version if isinstance(v, Obj) else 1}")
            self.string(v.typename)
            if isinstance(v, Obj):
                self.obj(v.fields)
            elif isinstance(v, Tensor):
                a = v.array
                shape = a.shape if a.size else ()  # Torch's empty tensor has no dimensions
                self.int(len(shape))
                for n in shape:
                    self.long(n)
                for s in a.strides[: len(shape)]:
                    self.long(s // a.itemsize)
                self.long(v.offset + 1)
                self.obj(v.storage)
            else:
                self.long(v.data.size)
                self.out += v.data.astype(v.data.dtype.newbyteorder("<")).tobytes()
        else:
            raise TypeError(f"cannot write {type(v).__name__}")


def dumps(obj: Any) -> bytes:
    """``torch.serialize(obj)`` in binary mode."""
    w = _Writer()
    w.obj(obj)
    return bytes(w.out)


def save(path: Path, obj: Any) -> Path:
    """``torch.save(path, obj)``."""
    path.write_bytes(dumps(obj))
    return path


def walk(obj: Obj) -> list[Obj]:
    """Every module of a tree, depth first."""
    return [obj, *(m for c in obj.fields.get("modules", []) for m in walk(c))]


def flatten_parameters(root: Obj, kind: str = "Cuda") -> Storage:
    """Make every weight and bias a view into one storage, as ``getParameters()`` leaves a
    network trained by fb.resnet.torch (tensors with storage offsets)."""
    params = [m[k] for m in walk(root) for k in ("weight", "bias") if m.fields.get(k) is not None]
    flat = Storage(np.concatenate([t.array.ravel() for t in params]), kind)
    offset = 0
    for t in params:
        t.storage, t.offset = flat, offset
        offset += t.array.size
    return flat


class Modules:
    """fb.resnet.torch's modules with the fields a saved model holds, tensors of one kind."""

    def __init__(
        self,
        kind: str = "Cuda",
        conv: str = "cudnn.SpatialConvolution",
        bn: str = "nn.SpatialBatchNormalization",
        relu: str = "cudnn.ReLU",
        bn_version: int = 2,
    ) -> None:
        self.kind, self.conv_cls, self.bn_cls, self.relu_cls = kind, conv, bn, relu
        self.bn_version = bn_version

    def _t(self, a: np.ndarray | None) -> Tensor | None:
        return None if a is None else Tensor(a, self.kind)

    def _base(self) -> dict[str, Any]:
        empty = np.zeros(0)
        return {
            "_type": f"torch.{self.kind}Tensor",
            "train": False,
            "output": self._t(empty),
            "gradInput": self._t(empty),
        }

    def module(self, typename: str, version: int = 1, **fields: Any) -> Obj:
        return Obj(typename, {**self._base(), **fields}, version)

    def conv(
        self,
        w: np.ndarray,
        b: np.ndarray | None = None,
        stride: int = 1,
        pad: int = 0,
        groups: int = 1,
        cls: str | None = None,
    ) -> Obj:
        n_out, per_group, kh, kw = w.shape
        cls = cls or self.conv_cls
        if cls == "nn.SpatialConvolutionMM":
            w = w.reshape(n_out, per_group * kh * kw)  # MM keeps its weight 2-D
        fields: dict[str, Any] = {
            "nInputPlane": per_group * groups,
            "nOutputPlane": n_out,
            "kW": kw,
            "kH": kh,
            "dW": stride,
            "dH": stride,
            "padW": pad,
            "padH": pad,
            "iSize": Storage(np.zeros(4), "Long"),
        }
        if cls.startswith("cudnn."):
            fields["groups"] = groups
        fields.update(weight=self._t(w), gradWeight=self._t(np.zeros(0)), bias=self._t(b))
        return self.module(cls, **fields)

    def bn(
        self,
        weight: np.ndarray | None,
        bias: np.ndarray | None,
        mean: np.ndarray,
        var: np.ndarray,
        eps: float = 1e-5,
    ) -> Obj:
        fields: dict[str, Any] = {
            "eps": eps,
            "momentum": 0.1,
            "affine": weight is not None,
            "nDim": 4,
            "running_mean": self._t(mean),
        }
        if self.bn_version < 2:  # old nn.BatchNormalization kept 1/sqrt(var + eps)
            fields["running_std"] = self._t(1.0 / np.sqrt(var + eps))
        else:
            fields["running_var"] = self._t(var)
        fields.update(weight=self._t(weight), bias=self._t(bias))
        return self.module(self.bn_cls, self.bn_version, **fields)

    def relu(self) -> Obj:
        if self.relu_cls == "nn.ReLU":
            return self.module("nn.ReLU", inplace=True, threshold=0, val=0)
        return self.module(self.relu_cls, inplace=True, mode="CUDNN_ACTIVATION_RELU")

    def maxpool(self, k: int = 3, s: int = 2, p: int = 1, ceil: bool = False) -> Obj:
        return self.module(
            "nn.SpatialMaxPooling",
            kW=k,
            kH=k,
            dW=s,
            dH=s,
            padW=p,
            padH=p,
            ceil_mode=ceil,
            indices=self._t(np.zeros(0)),
        )

    def avgpool(self, k: int) -> Obj:
        return self.module(
            "cudnn.SpatialAveragePooling",
            kW=k,
            kH=k,
            dW=1,
            dH=1,
            padW=0,
            padH=0,
            ceil_mode=False,
            count_include_pad=True,
        )

    def view(self, n: int) -> Obj:
        return self.module(
            "nn.View", size=Storage(np.array([n]), "Long"), numElements=n, numInputDims=3
        )

    def linear(self, w: np.ndarray, b: np.ndarray) -> Obj:
        return self.module(
            "nn.Linear", gradWeight=self._t(np.zeros(0)), weight=self._t(w), bias=self._t(b)
        )

    def seq(self, *mods: Obj) -> Obj:
        return self.module("nn.Sequential", modules=list(mods))

    def concat(self, *mods: Obj) -> Obj:
        return self.module("nn.ConcatTable", modules=list(mods))

    def cadd(self) -> Obj:
        return self.module("nn.CAddTable", inplace=True)

    def identity(self) -> Obj:
        return self.module("nn.Identity")


def resnext(
    m: Modules,
    rng: np.random.Generator,
    *,
    blocks: Sequence[int] = (3, 4, 6, 3),
    cardinality: int = 32,
    width: int = 4,
    widths: Sequence[int] = (256, 512, 1024, 2048),
    stem: int = 64,
    family: str = "imagenet",
    num_classes: int = 1000,
    pool: int = 7,
    conv_bias: Callable[[int], bool] = lambda i: False,
) -> Obj:
    """A ResNeXt in models/resnext.lua's layout (form C, shortcut type B) with random
    weights and BN statistics; ``conv_bias(i)`` gives the i-th conv (0-based) a bias."""
    count = [0]

    def conv(n_in: int, n_out: int, k: int, stride: int = 1, groups: int = 1) -> Obj:
        fan_in = n_in // groups * k * k
        w = rng.normal(0, np.sqrt(2.0 / fan_in), (n_out, n_in // groups, k, k))
        b = rng.normal(0, 0.1, n_out) if conv_bias(count[0]) else None
        count[0] += 1
        return m.conv(w, b, stride, (k - 1) // 2, groups)

    def bn(n: int, gain: float = 1.0) -> Obj:
        return m.bn(
            gain * rng.uniform(0.5, 1.5, n),
            rng.normal(0, 0.1, n),
            rng.normal(0, 0.2, n),
            rng.uniform(0.5, 2.0, n),
        )

    if family == "imagenet":
        net = [conv(3, stem, 7, 2), bn(stem), m.relu(), m.maxpool()]
    else:
        net = [conv(3, stem, 3), bn(stem), m.relu()]
    in_ch = stem
    for i, (n, out) in enumerate(zip(blocks, widths, strict=True)):
        d = cardinality * width * 2**i
        stage = []
        for j in range(n):
            s = 2 if i > 0 and j == 0 else 1
            branch = m.seq(
                conv(in_ch, d, 1),
                bn(d),
                m.relu(),
                conv(d, d, 3, s, cardinality),
                bn(d),
                m.relu(),
                conv(d, out, 1),
                bn(out, 0.3),
            )
            short = m.seq(conv(in_ch, out, 1, s), bn(out)) if s != 1 or in_ch != out else None
            stage.append(m.seq(m.concat(branch, short or m.identity()), m.cadd(), m.relu()))
            in_ch = out
        net.append(m.seq(*stage))
    w = rng.normal(0, 1 / np.sqrt(in_ch), (num_classes, in_ch))
    net += [m.avgpool(pool), m.view(in_ch), m.linear(w, rng.normal(0, 0.1, num_classes))]
    return m.seq(*net)
