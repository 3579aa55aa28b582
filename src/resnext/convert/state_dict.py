"""Import torchvision/timm-named state dicts: bare, or wrapped by torch.compile (``_orig_mod.``),
DDP/DataParallel (``module.``), Lightning (``state_dict`` with ``model.``) or an EMA entry.

The architecture comes from a model name (checked against every shape) or is inferred from
the shapes alone (:func:`infer_architecture`); a state dict of another network says what it
looks like (:func:`describe_state_dict`) instead of failing on the first odd key.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..checkpoint import (
    WRAPPER_KEYS,
    add_num_batches_tracked,
    extract_state_dict,
    load_checked,
    read_file,
)
from ..checkpoint.checked_load import describe_differences, key_differences
from ..data import IMAGENET_MEAN, IMAGENET_STD, Preprocess
from ..data.cifar import CIFAR10_MEAN, CIFAR10_STD, CIFAR100_MEAN, CIFAR100_STD
from ..errors import WeightsError
from ..models import ResNeXt, arch_from_stages, create_model, depth_from_blocks
from .base import Imported, repairs

#: Checkpoint entries holding EMA weights, tried in this order: ours and timm's ModelEmaV2
#: (``ema``), other trainers (``model_ema``), timm's train.py (``state_dict_ema``),
#: Lornatang-style AveragedModel checkpoints (``ema_state_dict``).
EMA_KEYS = ("ema", "model_ema", "state_dict_ema", "ema_state_dict")

# torchvision's eval transforms (models/resnet.py): V1 weights resize 256, the V2 recipe 232;
# both bilinear, centre crop 224, ImageNet mean/std.
TV_V1 = Preprocess(224, 256, "bilinear", IMAGENET_MEAN, IMAGENET_STD)
TV_V2 = Preprocess(224, 232, "bilinear", IMAGENET_MEAN, IMAGENET_STD)
#: torchvision weight files evaluated at resize 232 (``*_Weights.*.url`` in models/resnet.py).
#: resnext101_64x4d has only the one (V2-recipe) file, named IMAGENET1K_V1 there.
TV_V2_FILES = (
    "resnext50_32x4d-1a0047aa",
    "resnext101_32x8d-110c445d",
    "resnext101_64x4d-173b62eb",
    "resnet50-11ad3fa6",
    "resnet101-cd907fc2",
    "resnet152-f82ba261",
    "wide_resnet50_2-9ba9bcbe",
    "wide_resnet101_2-d733dc28",
)
PRESETS = {"tv-v1": TV_V1, "tv-v2": TV_V2}

_BLOCK = re.compile(r"^layer(\d+)\.(\d+)\.")

# Signature keys of other model families (timm and torchvision names), first match wins.
_FAMILIES: tuple[tuple[str, str], ...] = (
    (
        r"^(cls_token|pos_embed|class_token|conv_proj\.weight)$|^patch_embed\.|^encoder\.layers\.",
        "a Vision Transformer (cls_token / pos_embed / patch_embed keys)",
    ),
    (r"^features\.denseblock\d", "a DenseNet (features.denseblockN)"),
    (r"^Mixed_\d", "an Inception network (Mixed_* blocks)"),
    (r"^conv_stem\.weight$", "an EfficientNet / MobileNet-family model (timm names: conv_stem)"),
    (
        r"^stages\.\d+\.blocks\.\d+\.conv_dw\.",
        "a ConvNeXt (timm names: stem, stages.N.blocks.M.conv_dw)",
    ),
    (r"^trunk_output\.", "a RegNet (torchvision names: stem, trunk_output)"),
    (
        r"^features\.\d+\.\d+\.block\.",
        "a torchvision EfficientNet / MobileNetV3 (features.N.M.block)",
    ),
)


def _blocks(state: Mapping[str, Tensor]) -> dict[int, int]:
    """Blocks per stage, from the ``layer{s}.{j}.`` prefixes."""
    seen: dict[int, set[int]] = {}
    for k in state:
        m = _BLOCK.match(k)
        if m:
            seen.setdefault(int(m[1]), set()).add(int(m[2]))
    return {s: max(js) + 1 for s, js in sorted(seen.items())}


def _shape(state: Mapping[str, Tensor], key: str) -> tuple[int, ...] | None:
    v = state.get(key)
    return tuple(v.shape) if isinstance(v, Tensor) else None


def describe_state_dict(state: Mapping[str, Tensor]) -> str:
    """What a state dict looks like, in words, from its keys and shapes (for error messages)."""
    keys = list(state)
    if not keys:
        return "an empty state dict (no tensors)"

    def has(pattern: str) -> bool:
        return any(re.search(pattern, k) for k in keys)

    conv1, conv2 = _shape(state, "layer1.0.conv1.weight"), _shape(state, "layer1.0.conv2.weight")
    grouped = conv1 is not None and conv2 is not None and conv2[1] != conv1[0]
    if "linear.weight" in state and has(r"^layer\d+\.\d+\.shortcut\."):
        if grouped:
            return (
                "a CIFAR ResNeXt in kuangliu/pytorch-cifar's layout (linear.weight, "
                "layer1.0.shortcut, a 1x1 stem), not a layout this package reads"
            )
        return (
            "a CIFAR ResNet (kuangliu/pytorch-cifar style: linear.weight, layer1.0.shortcut), "
            "not a ResNeXt"
        )
    for pattern, what in _FAMILIES:
        if has(pattern):
            return f"{what}, not a ResNeXt"
    if has(r"^features\.\d+\.weight$") and has(r"^classifier\.\d+\.weight$"):
        n = sum(1 for k in keys if re.match(r"^features\.\d+\.weight$", k) and state[k].ndim == 4)
        guess = {5: "alexnet", 8: "vgg11", 10: "vgg13", 13: "vgg16", 16: "vgg19"}.get(n)
        return (
            f"a VGG-style network (features.N.weight, classifier.N.weight: {n} conv layers"
            + (f", {guess}?" if guess else "")
            + "), not a ResNeXt"
        )
    if "conv1.0.weight" in state and "layer1.0.conv1.weight" in state:
        return "a ResNet with a deep 3-conv stem (timm resnet*d / *s: conv1.0, conv1.3, conv1.6)"
    if has(r"\.se\.|se_module|\.attn\."):
        return "a ResNet/ResNeXt with squeeze-excitation or attention modules, not a plain ResNeXt"
    if "layer1.0.conv1.weight" in state and "conv1.weight" in state:
        counts = tuple(_blocks(state).values())
        if "layer1.0.conv3.weight" not in state:
            guess = {(2, 2, 2, 2): "resnet18", (3, 4, 6, 3): "resnet34"}.get(counts)
            return (
                "a ResNet with basic blocks (torchvision names, two 3x3 convs per block"
                + (f": {guess}?" if guess else "")
                + "), not a bottleneck ResNeXt; resnet50 and deeper are supported"
            )
        if has(r"downsample\.2\.weight$"):
            return "a ResNet-D (timm names: average-pool shortcut, downsample.1 is the conv)"
        if conv2 is not None and not grouped:
            depth = depth_from_blocks("imagenet", counts)
            return (
                "a plain ResNet (torchvision names, 3x3 convs with groups=1"
                + (f": resnet{depth}?" if depth else "")
                + ")"
            )
        if conv2 is not None:
            c = conv2[0] // conv2[1]
            return f"a torchvision-named ResNeXt (cardinality {c}, bottleneck width {conv2[1]})"
    first = ", ".join(f"{k} {tuple(state[k].shape)}" for k in keys[:4])
    return f"{len(keys)} tensors in no layout this package knows (first: {first})"


def _not_resnext(state: Mapping[str, Tensor], why: str) -> WeightsError:
    return WeightsError(
        f"not a ResNeXt of a known layout ({why}): it looks like {describe_state_dict(state)}"
    )


def infer_architecture(state: Mapping[str, Tensor]) -> dict[str, Any]:
    """The ``ResNeXt(**arch)`` keyword arguments of a torchvision-named state dict.

    Family from the stem (7x7: ImageNet, 3x3: CIFAR), depth from the blocks per stage,
    cardinality and width from ``layer1.0.conv2`` (out channels / in channels per group),
    block form from the key layout (``paths.N`` for forms a/b), num_classes from ``fc``, stem
    and stage widths from the shapes (``widths`` None where they are the paper's). The result
    is checked against every key and shape; a ``num_batches_tracked`` the file lacks (older
    torchvision files) is not counted as missing.
    """
    stem = state.get("conv1.weight")
    if not isinstance(stem, Tensor) or stem.ndim != 4:
        raise _not_resnext(state, "no 4-d conv1.weight")
    if "fc.weight" not in state:
        raise _not_resnext(state, "no fc.weight")
    family = {7: "imagenet", 3: "cifar"}.get(int(stem.shape[-1]))
    if family is None:
        raise _not_resnext(state, f"a {stem.shape[-2]}x{stem.shape[-1]} stem conv")
    if "layer1.0.paths.0.conv2.weight" in state:
        form = "b" if "layer1.0.conv3.weight" in state else "a"
        paths = {int(m[1]) for k in state if (m := re.match(r"^layer1\.0\.paths\.(\d+)\.", k))}
        cardinality = max(paths) + 1
        width = int(state["layer1.0.paths.0.conv2.weight"].shape[0])
    elif "layer1.0.conv2.weight" in state and "layer1.0.conv3.weight" in state:
        form = "c"
        out_ch, per_group = state["layer1.0.conv2.weight"].shape[:2]
        if out_ch % per_group:
            raise _not_resnext(state, f"layer1.0.conv2 has {out_ch} outputs, {per_group} per group")
        cardinality, width = int(out_ch // per_group), int(per_group)
    else:
        raise _not_resnext(state, "no bottleneck block layer1.0 (conv1, conv2, conv3)")
    counts = tuple(_blocks(state).values())
    missing = [f"layer{s + 1}.0.bn3.weight" for s in range(len(counts))]
    missing = [k for k in missing if k not in state]
    if missing:
        raise _not_resnext(state, f"no {missing[0]} (a bottleneck without its last BN)")
    widths = tuple(int(state[f"layer{s + 1}.0.bn3.weight"].shape[0]) for s in range(len(counts)))
    try:
        shape = arch_from_stages(family, counts, widths)
    except ValueError as e:
        raise WeightsError(f"a {family}-family ResNeXt: {e}") from e
    depth = shape["depth"]
    arch: dict[str, Any] = {
        "depth": depth,
        "cardinality": cardinality,
        "bottleneck_width": width,
        "family": family,
        "num_classes": int(state["fc.weight"].shape[0]),
        "in_chans": int(stem.shape[1]),
        "block_form": form,
        "stem_width": int(stem.shape[0]),
        "widths": shape["widths"],
    }
    try:
        with torch.device("meta"):
            own = ResNeXt(**arch).state_dict()
    except ValueError as e:
        raise WeightsError(f"the shapes give an impossible architecture {arch}: {e}") from e
    problems = mismatches(own, state)
    if problems:
        raise WeightsError(
            f"the shapes say depth {depth}, cardinality {cardinality}, width {width} "
            f"({family}), but the rest does not fit: {problems}"
        )
    return arch


def mismatches(own: Mapping[str, Tensor], state: Mapping[str, Tensor]) -> str:
    """Missing, unexpected and mis-shaped keys of ``state`` against ``own``, in words
    ('' when it fits); a missing ``num_batches_tracked`` is not a problem."""
    missing, unexpected, shapes = key_differences(own, state)
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    return "; ".join(describe_differences(missing, unexpected, shapes, examples=4))


def unwrap(entry: Mapping[str, Any], file: str) -> tuple[dict[str, Tensor], int | None]:
    """The state dict inside a checkpoint entry, prefixes stripped, and the ``n_averaged``
    count of a ``torch.optim.swa_utils.AveragedModel`` (its state dict is ``n_averaged`` plus
    ``module.*``), which is not a weight and is returned apart."""
    for key in WRAPPER_KEYS:
        if isinstance(entry.get(key), Mapping):
            entry = entry[key]
            break
    entry = dict(entry)
    n_averaged = None
    others = [k for k in entry if k != "n_averaged"]
    if "n_averaged" in entry and others and all(k.startswith("module.") for k in others):
        n_averaged = int(torch.as_tensor(entry.pop("n_averaged")).item())
    try:
        return extract_state_dict(entry), n_averaged
    except WeightsError as e:
        raise WeightsError(f"{file}: {e}") from e


def _preprocess(name: str, preprocess: str | None, arch: dict[str, Any]) -> tuple[Preprocess, str]:
    if preprocess is not None and preprocess not in PRESETS:
        raise WeightsError(f"preprocess must be one of {', '.join(PRESETS)}, got {preprocess!r}")
    if arch["family"] == "cifar":
        if preprocess is not None:
            raise WeightsError(
                f"{preprocess!r} is torchvision's ImageNet 224 preprocessing; "
                "this is a CIFAR-family (32x32) model"
            )
        c100 = arch["num_classes"] == 100
        mean, std = (CIFAR100_MEAN, CIFAR100_STD) if c100 else (CIFAR10_MEAN, CIFAR10_STD)
        return Preprocess(32, None, "bilinear", mean, std), (
            f"assumed: CIFAR-{100 if c100 else 10} statistics at 32x32 (the file names none)"
        )
    if preprocess is not None:
        return PRESETS[preprocess], f"{preprocess} (asked for)"
    hit = next((f for f in TV_V2_FILES if f.rsplit("-", 1)[1] in name), None)
    if hit:
        return TV_V2, f"tv-v2 (the file name carries torchvision's V2 weights hash of {hit})"
    return TV_V1, "tv-v1 (torchvision's V1 default: bilinear 256 -> 224)"


def import_state_dict(
    path: str | Path,
    *,
    model: str | None = None,
    ema: bool = False,
    preprocess: str | None = None,
) -> Imported:
    """Read a torchvision/timm-named state dict or a checkpoint wrapping one.

    Args:
        path: ``.pth``/``.pt``/``.safetensors``; read with ``weights_only=True``.
        model: a registry name (e.g. ``resnext50_32x4d``); None infers it from the shapes.
            Either way every key and shape is checked before anything is copied.
        ema: take the EMA entry (one of :data:`EMA_KEYS`) instead of the trained weights.
        preprocess: ``tv-v1`` (resize 256 -> 224) or ``tv-v2`` (232 -> 224); None picks V2
            for torchvision's V2 file names and V1 otherwise.
    """
    p = Path(path)
    obj = read_file(p)
    if obj.get("format") == "resnext-checkpoint":
        raise WeightsError(f"{p.name} is already a resnext checkpoint: use it as it is")
    ema_key = next((k for k in EMA_KEYS if isinstance(obj.get(k), Mapping)), None)
    if ema and ema_key is None:
        raise WeightsError(
            f"{p.name} holds no EMA weights (none of {', '.join(EMA_KEYS)}); its entries: "
            f"{', '.join(sorted(map(str, obj))[:8])}{' ...' if len(obj) > 8 else ''}"
        )
    entry = obj[ema_key] if ema else obj
    state, n_averaged = unwrap(entry, p.name)
    added = add_num_batches_tracked(state)
    named = next(
        (obj[k] for k in ("arch", "model_name", "architecture") if isinstance(obj.get(k), str)),
        None,
    )
    if model is None:
        try:
            arch = infer_architecture(state)
        except WeightsError as e:
            said = f" (the file names its model {named!r})" if named else ""
            raise WeightsError(f"{p.name}: {e}{said}") from e
        net = ResNeXt(**arch)
    else:
        # The name fixes depth, cardinality and width; the classifier's size is the file's.
        classes = _shape(state, "fc.weight")
        try:
            net = create_model(model, **({"num_classes": classes[0]} if classes else {}))
        except ValueError as e:
            raise WeightsError(f"model {model!r}: {e}") from e
        arch = net.arch.to_dict()
    try:
        load_checked(net, state)
    except WeightsError as e:
        hint = ""
        if model is not None:
            try:
                fits = infer_architecture(state)
                hint = (
                    f" The file's shapes fit depth {fits['depth']}, cardinality "
                    f"{fits['cardinality']}, width {fits['bottleneck_width']}."
                )
            except WeightsError:
                hint = f" The file looks like {describe_state_dict(state)}."
        raise WeightsError(f"{p.name}: {e}{hint}") from e
    net.eval()
    pre, pre_from = _preprocess(p.name, preprocess, arch)
    source: dict[str, Any] = {
        "format": "state_dict",
        "file": p.name,
        "weights": "ema" if ema else "model",
        "entry": ema_key if ema else None,
        "ema_available": ema_key,
        "architecture_from": f"model name {model}" if model else "inferred from the shapes",
        "preprocess_from": pre_from,
        **repairs(n_averaged, added),
    }
    return Imported(model=net, preprocess=pre, classes=None, source=source)
