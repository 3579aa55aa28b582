"""The built-in dataset: scikit-learn's handwritten digits, ready to train on with no download.

1,797 grayscale 8x8 images of the digits 0-9 (UCI ML hand-written digits, shipped
inside scikit-learn). Pixel values 0..16 are scaled to 0..255, upsampled once to
32x32 (bilinear) and repeated to 3 channels, so the CIFAR-style ResNeXt-29 takes
them as they are. One stratified split with a fixed seed gives train / val / test.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import TensorImages

DIGITS_CLASSES = [str(i) for i in range(10)]
DIGITS_SIZE = 32
# Pixel statistics of all 1,797 digits at 32x32 (the three channels are equal).
DIGITS_MEAN = (0.3052,) * 3
DIGITS_STD = (0.3236,) * 3


def load_digits_images(size: int = DIGITS_SIZE) -> tuple[torch.Tensor, list[int]]:
    """All 1,797 images as uint8 ``(N, 3, size, size)`` and their labels."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = torch.tensor(bunch.images, dtype=torch.float32).unsqueeze(1) * (255.0 / 16.0)
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    x = x.round().clamp(0, 255).to(torch.uint8).repeat(1, 3, 1, 1)
    return x.contiguous(), [int(v) for v in bunch.target]


def stratified_split(labels: list[int], fractions: tuple[float, ...], seed: int) -> list[list[int]]:
    """Split indices into ``len(fractions) + 1`` parts per class, shuffled with ``seed``.

    ``fractions`` are the shares of the later parts (e.g. val, test); the first part
    (train) takes the rest. Each class is split on its own, so every part keeps the
    class balance.
    """
    g = torch.Generator().manual_seed(seed)
    parts: list[list[int]] = [[] for _ in range(len(fractions) + 1)]
    by_class: dict[int, list[int]] = {}
    for i, y in enumerate(labels):  # one pass: ImageNet-sized label lists stay fast
        by_class.setdefault(y, []).append(i)
    for c in sorted(by_class):
        idx = by_class[c]
        idx = [idx[j] for j in torch.randperm(len(idx), generator=g).tolist()]
        start = len(idx)
        for k in range(len(fractions), 0, -1):
            n = round(len(idx) * fractions[k - 1])
            parts[k].extend(idx[start - n : start])
            start -= n
        parts[0].extend(idx[:start])
    return [sorted(p) for p in parts]


def digits_splits(
    val_fraction: float, test_fraction: float, seed: int
) -> tuple[TensorImages, TensorImages, TensorImages]:
    images, labels = load_digits_images()
    train, val, test = stratified_split(labels, (val_fraction, test_fraction), seed)
    return tuple(  # type: ignore[return-value]
        TensorImages(images[idx], [labels[i] for i in idx]) for idx in (train, val, test)
    )
