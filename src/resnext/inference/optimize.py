"""The model made fast for inference, without changing what it computes.

- :func:`fold_batchnorm`: each eval-mode BatchNorm that follows a convolution is folded into
  the convolution's weight and bias (``w' = w * g / sqrt(v + eps)``,
  ``b' = (b - m) * g / sqrt(v + eps) + beta``), so inference does one pass over each
  feature map instead of two. The result equals the model within float rounding (a few
  1e-5 relative in fp32, channels_last included; tested for the three block forms). Form (a)
  keeps the BN after each block's sum of paths (it follows an add, not a convolution).
- :class:`EagerRunner`: the folded model in channels_last (NHWC, the layout oneDNN's CPU
  kernels and tensor cores prefer); the ``eager`` back-end.
- :class:`CompiledRunner`: the folded model compiled by ``torch.compile`` (inductor, with
  freezing: weights become constants and are pre-packed for the CPU kernels); the
  ``compile`` back-end. Compiling takes tens of seconds once per batch shape, so a batch
  smaller than the largest seen is zero-padded to it (eval-mode BN makes images
  independent) instead of compiling again.
"""

from __future__ import annotations

import copy
import time
import warnings

import torch
from torch import nn
from torch.fx.experimental.optimization import fuse


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """A copy of ``model`` (in eval mode) with every BatchNorm that directly follows a
    convolution folded into it. A model torch.fx cannot trace is copied unchanged, with a
    warning (it still runs, a little slower)."""
    model = copy.deepcopy(model).eval()
    try:
        folded = fuse(model, inplace=True)
    except Exception as e:  # torch.fx raises many types on untraceable code
        warnings.warn(
            f"BatchNorm folding skipped: torch.fx cannot trace {type(model).__name__} ({e})",
            stacklevel=2,
        )
        return model
    if hasattr(model, "arch"):  # the architecture record callers read off our models
        folded.arch = model.arch
    return folded


def _prepared(model: nn.Module, device: torch.device) -> nn.Module:
    """Folded, on ``device``, in channels_last, gradients off."""
    folded = fold_batchnorm(model).to(device, memory_format=torch.channels_last)
    for p in folded.parameters():
        p.requires_grad_(False)
    return folded


class EagerRunner(nn.Module):
    """``forward(images) -> logits`` of the model with BN folded, in channels_last."""

    def __init__(self, model: nn.Module, device: torch.device) -> None:
        super().__init__()
        self.net = _prepared(model, device)
        self.arch = getattr(model, "arch", None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.contiguous(memory_format=torch.channels_last))


class CompiledRunner(nn.Module):
    """``forward(images) -> logits`` of the folded model, compiled with inductor.

    Each new input shape (batch after padding, channels, height, width) compiles once;
    ``compile_seconds`` records how long each took, so callers can report the warm-up.
    """

    def __init__(self, model: nn.Module, device: torch.device) -> None:
        super().__init__()
        self.net = _prepared(model, device)
        self.arch = getattr(model, "arch", None)
        # dynamic=False: one specialised graph per shape (fastest kernels); freezing needs
        # no_grad/inference mode, which is how every caller runs inference.
        self.compiled = torch.compile(self.net, dynamic=False, options={"freezing": True})
        self._shapes: set[tuple[int, ...]] = set()
        self.compile_seconds: list[float] = []

    def _padded_batch(self, x: torch.Tensor) -> int:
        """The batch size to run ``x`` at: the smallest compiled one that holds it."""
        same = [s[0] for s in self._shapes if s[1:] == tuple(x.shape[1:]) and s[0] >= len(x)]
        return min(same) if same else len(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = len(x)
        size = self._padded_batch(x)
        if size > n:
            x = torch.cat([x, x.new_zeros((size - n, *x.shape[1:]))])
        x = x.contiguous(memory_format=torch.channels_last)
        shape = tuple(x.shape)
        if shape in self._shapes:
            return self.compiled(x)[:n]
        start = time.perf_counter()
        out = self.compiled(x)
        self.compile_seconds.append(time.perf_counter() - start)
        self._shapes.add(shape)
        return out[:n]
