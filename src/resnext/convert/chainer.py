"""Import nutszebra/resnext Chainer ``.npz`` files (``chainer.serializers.save_npz``).

``save_npz`` stores one array per parameter and persistent value, keyed by the link path
without the leading slash (``conv_bn_relu/conv/W``, ``.../bn/avg_mean``, ``.../bn/N``).
Every Chainer conv has a bias (``L.Convolution2D`` default); it is folded into the BN that
follows (``BN(Wx + b)`` = ``BN'(Wx)`` with ``running_mean' = avg_mean - b``). Chainer's BN
eps is not in the file: the layout's own is used (resnext_ilsvrc.py passes 1e-5 everywhere;
resnext.py keeps ``L.BatchNormalization``'s default 2e-5, 1e-5 in early Chainer v1) unless
``bn_eps`` says otherwise, and is folded into ``running_var`` (``var + eps - 1e-5``) so the
model keeps PyTorch's eps and a saved converted file computes the same.

**ILSVRC layout** (resnext_ilsvrc.py; the authors' Torch7 weights converted by its
ilsvrc_converter.py): ``conv_bn_relu`` (7x7/2 stem), ``resnext_block_{i}_{j}`` (0-based) of
``conv_bn_relu_1`` (1x1), ``conv_group_2/conv_group_{g}`` (C separate 3x3 convs, one a group,
concatenated in g order into one grouped weight), ``bn_relu_3``, ``conv_bn_4`` (1x1), ReLU
after the addition; ``skip_connection_{i}`` (1x1 conv + BN) at each stage's first block;
``linear/linear``. The weights map exactly, but their max pooling is Chainer's
``max_pooling_2d(3, 2, 1)`` with the default ``cover_all=True`` (ceil mode): at a 224 input
the 112x112 stem output pools to 57x57 there and to 56x56 here (floor mode, as the Torch7
original and torchvision). Outputs agree exactly only where the stem output is odd (input
sides 4k + 1 and 4k + 2, e.g. 225); at 224 they differ, and this model is the one the
weights were trained as.

**CIFAR layout** (resnext.py): ``resnext_block_{s}_{j}`` (1-based) of C paths
``conv_bn_relu1_{g}`` (1x1) and ``conv_bn_relu2_{g}`` (3x3), concatenated, then
``conv_bn_relu3`` (1x1); a zero-padded identity shortcut (stride-2 subsampling, extra
channels zero); head ``linear`` = 1x1 conv + BN + ReLU. The weights map exactly (paths into
grouped convs, the zero-padded shortcut into an identity projection, conv + BN into ``fc``),
but the network differs: its blocks apply ReLU *before* the addition and none after it, and
its logits pass a ReLU. Our ResNeXt cannot compute that, so this layout is refused unless
``allow_inexact=True`` (e.g. to fine-tune from it), and the source notes then say so.
"""

from __future__ import annotations

import re
import zipfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..checkpoint import load_checked
from ..data import IMAGENET_MEAN, IMAGENET_STD, Preprocess
from ..data.cifar import CIFAR10_MEAN, CIFAR10_STD, CIFAR100_MEAN, CIFAR100_STD
from ..errors import WeightsError
from ..models import ResNeXt, arch_from_stages
from .base import Imported
from .state_dict import mismatches

TORCH_EPS = 1e-5  # nn.BatchNorm2d's eps, which the converted model keeps
LAYOUT_EPS = {"ilsvrc": 1e-5, "cifar": 2e-5}
# The ILSVRC files are facebookresearch/ResNeXt's Torch7 weights: fb.resnet.torch's eval
# (bicubic 256, centre crop 224 at the ceil offset) is what they were trained and tested with.
TORCH7_EVAL = Preprocess(224, 256, "bicubic", IMAGENET_MEAN, IMAGENET_STD, "ceil")


def read_npz(path: str | Path) -> dict[str, np.ndarray]:
    """Every array of an ``.npz``, read with ``allow_pickle=False``; a clear error otherwise."""
    p = Path(path)
    if not p.is_file():
        raise WeightsError(f"{str(p)!r} does not exist or is not a file")
    if p.stat().st_size == 0:
        raise WeightsError(f"{p.name}: the file is empty; expected a Chainer .npz file")
    with open(p, "rb") as f:
        head = f.read(6)
    if not head.startswith(b"PK\x03\x04"):
        what = "a single .npy array" if head == b"\x93NUMPY" else "no zip archive"
        raise WeightsError(f"{p.name} holds {what}, not an .npz file (numpy.savez / save_npz)")
    try:
        with np.load(p, allow_pickle=False) as npz:
            return {k: np.asarray(npz[k]) for k in npz.files}
    except ValueError as e:
        if "pickle" in str(e):
            raise WeightsError(
                f"{p.name} holds pickled Python objects, which are not loaded (numpy's "
                "allow_pickle=False): a Chainer save_npz file holds plain arrays only"
            ) from e
        raise WeightsError(f"{p.name}: not a readable .npz file (truncated?): {e}") from e
    except (OSError, EOFError, zipfile.BadZipFile, zlib.error, KeyError) as e:
        raise WeightsError(
            f"{p.name}: not a readable .npz file (truncated or corrupt?): {type(e).__name__}: {e}"
        ) from e


class _Layout:
    """The arrays of one file under its root, consumed key by key into our state dict."""

    def __init__(self, file: str, arrays: dict[str, np.ndarray], root: str, eps: float) -> None:
        self.file, self.root, self.eps = file, root, eps
        self.arrays = {k[len(root) :]: v for k, v in arrays.items()}
        self.used: set[str] = set()
        self.state: dict[str, Tensor] = {}
        self.origin: dict[str, str] = {}  # our key -> the Chainer link it came from
        self.folded = 0

    def take(self, key: str) -> np.ndarray:
        if key not in self.arrays:
            raise WeightsError(f"{self.file}: missing array {self.root}{key}")
        self.used.add(key)
        return self.arrays[key].astype(np.float64)

    def conv(self, link: str) -> tuple[np.ndarray, np.ndarray]:
        w, b = self.take(f"{link}/W"), self.take(f"{link}/b")
        if w.ndim != 4 or b.shape != (w.shape[0],):
            raise WeightsError(
                f"{self.file}: {self.root}{link}: W {w.shape} and b {b.shape} are not a conv's"
            )
        return w, b

    def convs(self, links: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Per-group convs, concatenated along the output axis in the order given."""
        parts = [self.conv(link) for link in links]
        for link, (w, _) in zip(links, parts, strict=True):
            if w.shape != parts[0][0].shape:
                raise WeightsError(
                    f"{self.file}: {self.root}{link}/W is {w.shape}, but {links[0]}/W is "
                    f"{parts[0][0].shape}; the groups of one conv must match"
                )
        return np.concatenate([w for w, _ in parts]), np.concatenate([b for _, b in parts])

    def bn_params(self, link: str) -> list[np.ndarray]:
        names = ("gamma", "beta", "avg_mean", "avg_var")
        out = [self.take(f"{link}/{n}") for n in names]
        if f"{link}/N" in self.arrays:
            self.used.add(f"{link}/N")
        for n, a in zip(names, out, strict=True):
            if a.shape != out[0].shape or a.ndim != 1:
                raise WeightsError(f"{self.file}: {self.root}{link}/{n} has shape {a.shape}")
        return out

    def put(self, name: str, value: np.ndarray, link: str) -> None:
        self.state[name] = torch.from_numpy(np.ascontiguousarray(value, dtype=np.float32))
        self.origin[name] = self.root + link

    def unit(self, conv: str, bn: str, conv_links: list[str], bn_links: list[str]) -> np.ndarray:
        """Our ``conv`` and ``bn`` from Chainer convs and BNs (several: per-group, joined in
        the order given), the conv bias folded into the BN; returns the conv weight."""
        w, bias = self.convs(conv_links)
        gamma, beta, mean, var = (
            np.concatenate(a)
            for a in zip(*(self.bn_params(link) for link in bn_links), strict=True)
        )
        if mean.shape[0] != w.shape[0]:
            raise WeightsError(
                f"{self.file}: {self.root}{bn_links[0]} normalises {mean.shape[0]} channels "
                f"after {w.shape[0]} from {self.root}{conv_links[0]}"
            )
        self.put(f"{conv}.weight", w, conv_links[0])
        self.put(f"{bn}.weight", gamma, bn_links[0])
        self.put(f"{bn}.bias", beta, bn_links[0])
        self.put(f"{bn}.running_mean", mean - bias, bn_links[0])
        self.put(f"{bn}.running_var", var + (self.eps - TORCH_EPS), bn_links[0])
        self.state[f"{bn}.num_batches_tracked"] = torch.tensor(0, dtype=torch.long)
        self.folded += 1
        return w

    def identity_projection(self, name: str, c_in: int, c_out: int) -> None:
        """Their zero-padded identity shortcut as a 1x1 conv [I; 0] and a BN that is the
        identity (weight 1, bias 0, mean 0, var 1 - eps)."""
        w = np.zeros((c_out, c_in, 1, 1))
        w[np.arange(c_in), np.arange(c_in)] = 1.0
        self.put(f"{name}.0.weight", w, "(zero-padded identity shortcut)")
        for k, v in (("weight", 1.0), ("bias", 0.0), ("running_mean", 0.0)):
            self.put(f"{name}.1.{k}", np.full(c_out, v), "(zero-padded identity shortcut)")
        self.put(f"{name}.1.running_var", np.full(c_out, 1.0 - TORCH_EPS), "(identity)")
        self.state[f"{name}.1.num_batches_tracked"] = torch.tensor(0, dtype=torch.long)


def _indices(arrays: dict[str, np.ndarray], pattern: str) -> dict[int, int]:
    """{stage: blocks} from keys matching ``pattern`` with two integer groups."""
    seen: dict[int, set[int]] = {}
    for k in arrays:
        m = re.match(pattern, k)
        if m:
            seen.setdefault(int(m[1]), set()).add(int(m[2]))
    return {s: len(js) for s, js in sorted(seen.items())}


def _count(arrays: dict[str, np.ndarray], pattern: str) -> int:
    return len({m[1] for k in arrays if (m := re.match(pattern, k))})


def _found(lay: _Layout, counts: tuple, c: int, d: int, widths: list, family: str) -> dict:
    classes, stem = lay.state["fc.weight"].shape[0], lay.state["conv1.weight"].shape[0]
    return {
        "counts": counts,
        "c": c,
        "d": int(d),
        "widths": tuple(widths),
        "family": family,
        "classes": classes,
        "stem": stem,
    }


def _stages(lay: _Layout, group_weight: str) -> tuple[tuple[int, ...], int]:
    """Blocks per stage, and the cardinality: how many ``group_weight`` arrays (a pattern
    whose ``N`` is the group index) the first block holds."""
    counts = tuple(_indices(lay.arrays, r"^resnext_block_(\d+)_(\d+)/").values())
    c = _count(lay.arrays, "^" + re.escape(group_weight).replace("N", r"(\d+)") + "$")
    if c == 0:
        raise WeightsError(f"{lay.file}: no {group_weight} arrays, so the cardinality is unknown")
    return counts, c


def _ilsvrc(lay: _Layout) -> dict[str, Any]:
    counts, c = _stages(lay, "resnext_block_0_0/conv_group_2/conv_group_N/conv/W")
    lay.unit("conv1", "bn1", ["conv_bn_relu/conv"], ["conv_bn_relu/bn"])
    widths, d = [], 0
    for i, n in enumerate(counts):
        for j in range(n):
            blk, ours = f"resnext_block_{i}_{j}", f"layer{i + 1}.{j}"
            lay.unit(
                f"{ours}.conv1",
                f"{ours}.bn1",
                [f"{blk}/conv_bn_relu_1/conv"],
                [f"{blk}/conv_bn_relu_1/bn"],
            )
            # conv_group_0 .. conv_group_{C-1}: numeric order, as Group_Conv joins them
            groups = [f"{blk}/conv_group_2/conv_group_{g}/conv" for g in range(c)]
            w = lay.unit(f"{ours}.conv2", f"{ours}.bn2", groups, [f"{blk}/bn_relu_3/bn"])
            d = d or w.shape[1]
            w = lay.unit(
                f"{ours}.conv3", f"{ours}.bn3", [f"{blk}/conv_bn_4/conv"], [f"{blk}/conv_bn_4/bn"]
            )
            if j == 0:
                widths.append(w.shape[0])
                skip = f"skip_connection_{i}"
                lay.unit(
                    f"{ours}.downsample.0", f"{ours}.downsample.1", [f"{skip}/conv"], [f"{skip}/bn"]
                )
    lay.put("fc.weight", lay.take("linear/linear/W"), "linear/linear")
    lay.put("fc.bias", lay.take("linear/linear/b"), "linear/linear")
    return _found(lay, counts, c, d, widths, "imagenet")


def _cifar(lay: _Layout) -> dict[str, Any]:
    counts, c = _stages(lay, "resnext_block_1_1/conv_bn_relu1_N/conv/W")
    c_in = lay.unit("conv1", "bn1", ["conv_bn_relu/conv"], ["conv_bn_relu/bn"]).shape[0]
    widths, d = [], 0
    for s, n in enumerate(counts, start=1):
        for j in range(1, n + 1):
            blk, ours = f"resnext_block_{s}_{j}", f"layer{s}.{j - 1}"
            for k in (1, 2):  # paths g = 1..C: numeric order, as their F.concat joins them
                links = [f"{blk}/conv_bn_relu{k}_{g}" for g in range(1, c + 1)]
                w = lay.unit(
                    f"{ours}.conv{k}",
                    f"{ours}.bn{k}",
                    [f"{x}/conv" for x in links],
                    [f"{x}/bn" for x in links],
                )
                d = d or w.shape[0] // c
            w = lay.unit(
                f"{ours}.conv3",
                f"{ours}.bn3",
                [f"{blk}/conv_bn_relu3/conv"],
                [f"{blk}/conv_bn_relu3/bn"],
            )
            if j == 1:
                widths.append(w.shape[0])
                if s > 1 or c_in != w.shape[0]:  # where ours has a projection
                    lay.identity_projection(f"{ours}.downsample", c_in, w.shape[0])
            c_in = w.shape[0]
    # Head: 1x1 conv (bias) + BN folded into one linear layer; their final ReLU is not kept.
    w, b = lay.conv("linear/conv")
    gamma, beta, mean, var = lay.bn_params("linear/bn")
    scale = gamma / np.sqrt(var + lay.eps)
    lay.put("fc.weight", scale[:, None] * w.reshape(w.shape[0], -1), "linear/conv")
    lay.put("fc.bias", scale * (b - mean) + beta, "linear/bn")
    return _found(lay, counts, c, d, widths, "cifar")


def import_chainer_npz(
    path: str | Path,
    *,
    bn_eps: float | None = None,
    allow_inexact: bool = False,
    preprocess: str = "torch7",
) -> Imported:
    """Read a nutszebra/resnext ``.npz`` (ILSVRC or CIFAR layout; see the module docstring).

    Args:
        path: the ``save_npz`` file; read with ``numpy.load(allow_pickle=False)``.
        bn_eps: Chainer BN eps the file was trained with; None: the layout's own.
        allow_inexact: convert the CIFAR layout although ours computes a different function.
        preprocess: for ILSVRC files, ``torch7`` (fb.resnet.torch's eval, which the weights
            were trained with) or ``nutszebra`` (their test_ilsvrc.py's resize 384 bilinear,
            the nearest our record holds: whole 384 crop, ImageNet mean/std for their
            per-image normalisation).
    """
    p = Path(path)
    arrays = read_npz(p)
    stems = [k for k in arrays if k == "conv_bn_relu/conv/W" or k.endswith("/conv_bn_relu/conv/W")]
    root = stems[0][: -len("conv_bn_relu/conv/W")] if len(stems) == 1 else None
    if root is None or not all(k.startswith(root) for k in arrays):
        first = ", ".join(f"{k} {v.shape}" for k, v in list(arrays.items())[:4])
        raise WeightsError(
            f"{p.name} is not a nutszebra/resnext Chainer file (no single conv_bn_relu/conv/W "
            f"stem under one root); it holds {len(arrays)} arrays (first: {first or 'none'})"
        )
    inner = {k[len(root) :] for k in arrays}
    if any(k.startswith("resnext_block_0_0/") for k in inner):
        layout = "ilsvrc"
    elif any(k.startswith("resnext_block_1_1/") for k in inner):
        layout = "cifar"
    else:
        raise WeightsError(
            f"{p.name}: a conv_bn_relu stem but no resnext_block_0_0 (ILSVRC "
            "layout) or resnext_block_1_1 (CIFAR layout) arrays"
        )
    eps = LAYOUT_EPS[layout] if bn_eps is None else float(bn_eps)
    if layout == "cifar" and not allow_inexact:
        raise WeightsError(
            f"{p.name} is nutszebra/resnext's CIFAR ResNeXt (resnext.py), a different network "
            "from ours: its blocks apply ReLU before the addition and none after it, and its "
            "logits pass a ReLU. The weights would map, but the model would not compute the "
            "same outputs; pass allow_inexact=True to convert it anyway (e.g. to fine-tune)"
        )
    if preprocess not in ("torch7", "nutszebra"):
        raise WeightsError(f"preprocess must be 'torch7' or 'nutszebra', got {preprocess!r}")
    lay = _Layout(p.name, arrays, root, eps)
    found = (_ilsvrc if layout == "ilsvrc" else _cifar)(lay)
    unused = sorted(set(lay.arrays) - lay.used)
    if unused:
        raise WeightsError(
            f"{p.name}: {len(unused)} arrays outside the {layout} layout, not converted: "
            f"{', '.join(root + k for k in unused[:4])}"
        )
    family = found["family"]
    try:
        shape = arch_from_stages(family, found["counts"], found["widths"])
    except ValueError as e:
        raise WeightsError(f"{p.name}: {e}") from e
    depth = shape["depth"]
    model = ResNeXt(
        **shape,
        cardinality=found["c"],
        bottleneck_width=int(found["d"]),
        num_classes=int(found["classes"]),
        stem_width=int(found["stem"]),
    )
    problem = mismatches(model.state_dict(), lay.state)
    if problem:
        own = model.state_dict()
        odd = sorted(k for k, v in lay.state.items() if k not in own or v.shape != own[k].shape)
        origins = "; ".join(f"{k} <- {lay.origin.get(k, '?')}" for k in odd[:4])
        raise WeightsError(
            f"{p.name}: the converted weights do not fit depth {depth}, C {found['c']}, "
            f"d {found['d']}: {problem}" + (f" (from Chainer: {origins})" if origins else "")
        )
    load_checked(model, lay.state)
    model.eval()
    notes = []
    if family == "imagenet":
        notes.append(
            "their max pooling uses Chainer's cover_all=True: 57x57 after the stem at "
            "a 224 input where this model (and the Torch7 original) has 56x56"
        )
        pre = TORCH7_EVAL
        if preprocess == "nutszebra":
            pre = Preprocess(384, 384, "bilinear", IMAGENET_MEAN, IMAGENET_STD)
            notes.append(
                "their test resizes the shorter side to 384 and feeds the whole image "
                "normalised by its own per-channel mean/std; recorded as a 384 crop "
                "with ImageNet mean/std"
            )
    else:
        notes.append(
            "inexact: their blocks apply ReLU before the addition and none after, "
            "and their logits pass a ReLU; this model does neither"
        )
        notes.append(
            "their test normalises each image by its own mean and std; recorded "
            "with the dataset's fixed statistics instead"
        )
        c100 = found["classes"] == 100
        mean, std = (CIFAR100_MEAN, CIFAR100_STD) if c100 else (CIFAR10_MEAN, CIFAR10_STD)
        pre = Preprocess(32, None, "bilinear", mean, std)
    return Imported(
        model=model,
        preprocess=pre,
        classes=None,
        source={
            "format": "chainer",
            "file": p.name,
            "layout": layout,
            "exact": layout == "ilsvrc",
            "bn_eps": eps,
            "biases_folded": lay.folded,
            "preprocess_from": preprocess if family == "imagenet" else "dataset statistics",
            "notes": notes,
        },
    )
