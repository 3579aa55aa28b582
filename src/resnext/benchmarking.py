"""What every speed measurement shares: ``resnext bench`` (:mod:`resnext.bench`), the scripts
under ``benchmarks/`` and the tests that fold BatchNorm. One copy each of the CPU's name, a
median timer, BatchNorm statistics as trained weights have them, and synthetic photos with
the ImageNet train pipeline that reads them.
"""

from __future__ import annotations

import contextlib
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from .config import DataConfig


def cpu_name() -> str:
    """The CPU's model name and the flags that decide the fast path."""
    name, flags = platform.processor() or "unknown CPU", set()
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name") and name in ("", "unknown CPU", platform.machine()):
                name = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
    shown = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile") if f in flags]
    return f"{name} ({', '.join(shown) or 'no AVX2'})"


def median_seconds(fn: Callable[[], object], repeat: int, warmup: int = 1) -> float:
    """The median wall time of ``repeat`` calls after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


@torch.no_grad()
def randomise_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Every BatchNorm's statistics and affine parameters away from their initial values
    (0, 1, 1, 0), as in trained weights: folding them into the convolutions is then real work
    for a benchmark and a real check for a test. Returns ``model``."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.3)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.3)
            m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.3)
    return model


def write_jpegs(root: Path, n: int, classes: int = 4, seed: int = 0) -> int:
    """``root/train/c<k>/<i>.jpg``: n JPEGs of 500x375 (ImageNet's typical size; smooth
    synthetic scenes plus noise, quality 90); returns their total size in bytes."""
    rng = np.random.default_rng(seed)
    h, w = 375, 500
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    total = 0
    for i in range(n):
        # low-frequency colour fields plus sensor-like noise: JPEG sizes like photos
        fx, fy, phase = (
            rng.uniform(0.005, 0.03, 3),
            rng.uniform(0.005, 0.03, 3),
            rng.uniform(0, 6.28, 3),
        )
        img = np.stack(
            [128 + 100 * np.sin(fx[c] * xx + fy[c] * yy + phase[c]) for c in range(3)], -1
        )
        img += rng.normal(0, 12, img.shape)
        path = root / "train" / f"c{i % classes}" / f"{i:05d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img.clip(0, 255).astype(np.uint8)).save(path, quality=90)
        total += path.stat().st_size
    return total


def imagenet_train_config(root: Path, name: str, workers: int) -> DataConfig:
    """The ImageNet train pipeline (paper augmentation at 224) over ``root``, all of it
    train, read by reader ``name`` (imagefolder, webdataset); shard streams shuffle among
    256 samples a worker."""
    return DataConfig(
        name=name,
        root=str(root),
        val_dir=None,
        val_fraction=0.0,
        augment="imagenet",
        image_size=224,
        num_workers=workers,
        shuffle_buffer=256,
    )
