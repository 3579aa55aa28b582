"""Exact conversion of a model's weights between the block forms of Fig. 3.

Form (c) is the canonical layout. A block of form (a) or (b) is mapped to it by
concatenating the per-path tensors along the channel axis: the C BNs of d channels
are one BN of C*d channels, the C 3x3 convs are one grouped conv (its weight is
``(C*d, d, 3, 3)``, group g owning channels g*d..(g+1)*d), and the C 1x1 expands of
form (a), summed, are one 1x1 on the concatenation (weights joined on the input axis).
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor

from .blocks import GroupedBottleneck, SplitConcatBottleneck, SplitSumBottleneck, _BlockBase
from .resnext import ResNeXt

_BN_KEYS = ("weight", "bias", "running_mean", "running_var")


def _bn_state(bn: torch.nn.BatchNorm2d) -> dict[str, Tensor]:
    return {k: getattr(bn, k).detach().clone() for k in _BN_KEYS} | {
        "num_batches_tracked": bn.num_batches_tracked.detach().clone()
    }


def _load_bn(bn: torch.nn.BatchNorm2d, state: dict[str, Tensor]) -> None:
    with torch.no_grad():
        for k, v in state.items():
            getattr(bn, k).copy_(v)


def _cat_bn(bns: list[torch.nn.BatchNorm2d]) -> dict[str, Tensor]:
    state = {k: torch.cat([getattr(bn, k).detach() for bn in bns]) for k in _BN_KEYS}
    state["num_batches_tracked"] = bns[0].num_batches_tracked.detach().clone()
    return state


def _split_bn(state: dict[str, Tensor], c: int) -> list[dict[str, Tensor]]:
    parts = {k: state[k].chunk(c) for k in _BN_KEYS}
    return [
        {k: parts[k][i] for k in _BN_KEYS} | {"num_batches_tracked": state["num_batches_tracked"]}
        for i in range(c)
    ]


def grouped_state(block: _BlockBase) -> dict[str, object]:
    """The block's residual-branch weights in form (c) layout."""
    if isinstance(block, GroupedBottleneck):
        return {
            "conv1": block.conv1.weight.detach().clone(),
            "bn1": _bn_state(block.bn1),
            "conv2": block.conv2.weight.detach().clone(),
            "bn2": _bn_state(block.bn2),
            "conv3": block.conv3.weight.detach().clone(),
            "bn3": _bn_state(block.bn3),
        }
    paths = list(block.paths)  # type: ignore[attr-defined]
    if isinstance(block, SplitSumBottleneck):
        conv3 = torch.cat([p.conv3.weight.detach() for p in paths], dim=1)
    elif isinstance(block, SplitConcatBottleneck):
        conv3 = block.conv3.weight.detach().clone()
    else:
        raise TypeError(f"unknown block type {type(block).__name__}")
    return {
        "conv1": torch.cat([p.conv1.weight.detach() for p in paths]),
        "bn1": _cat_bn([p.bn1 for p in paths]),
        "conv2": torch.cat([p.conv2.weight.detach() for p in paths]),
        "bn2": _cat_bn([p.bn2 for p in paths]),
        "conv3": conv3,
        "bn3": _bn_state(block.bn3),
    }


def load_grouped_state(block: _BlockBase, state: dict) -> None:
    """Write form (c) layout weights into a block of any form."""
    c = block.cardinality
    with torch.no_grad():
        if isinstance(block, GroupedBottleneck):
            block.conv1.weight.copy_(state["conv1"])
            _load_bn(block.bn1, state["bn1"])
            block.conv2.weight.copy_(state["conv2"])
            _load_bn(block.bn2, state["bn2"])
            block.conv3.weight.copy_(state["conv3"])
        else:
            conv1, conv2 = state["conv1"].chunk(c), state["conv2"].chunk(c)
            bn1, bn2 = _split_bn(state["bn1"], c), _split_bn(state["bn2"], c)
            for i, path in enumerate(block.paths):  # type: ignore[attr-defined]
                path.conv1.weight.copy_(conv1[i])
                _load_bn(path.bn1, bn1[i])
                path.conv2.weight.copy_(conv2[i])
                _load_bn(path.bn2, bn2[i])
            if isinstance(block, SplitSumBottleneck):
                for path, w in zip(block.paths, state["conv3"].chunk(c, dim=1), strict=True):
                    path.conv3.weight.copy_(w)
            else:
                block.conv3.weight.copy_(state["conv3"])
        _load_bn(block.bn3, state["bn3"])


def convert_block_form(model: ResNeXt, form: str) -> ResNeXt:
    """Return a new model of block form ``form`` computing exactly what ``model`` does.

    Stem, shortcuts and classifier are copied as they are; each block's residual
    branch is re-laid out through the form (c) layout. The result is in the same
    train/eval mode and on the same device and dtype as the input.
    """
    arch = model.arch
    target = ResNeXt(**{**arch.to_dict(), "block_form": form})
    param = next(model.parameters())
    target = target.to(device=param.device, dtype=param.dtype)
    src_blocks = [m for m in model.modules() if isinstance(m, _BlockBase)]
    dst_blocks = [m for m in target.modules() if isinstance(m, _BlockBase)]
    for src, dst in zip(src_blocks, dst_blocks, strict=True):
        load_grouped_state(dst, grouped_state(src))
        if src.downsample is not None:
            dst.downsample = copy.deepcopy(src.downsample)
    with torch.no_grad():
        target.conv1.weight.copy_(model.conv1.weight)
    _load_bn(target.bn1, _bn_state(model.bn1))
    target.fc = copy.deepcopy(model.fc)
    target.train(model.training)
    return target
