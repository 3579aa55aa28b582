"""The paper's train and eval transforms, built from torchvision's v2 transforms.

Inputs are PIL images or uint8 CHW tensors; outputs are float CHW tensors, normalised.
Train and eval use the same resize back-end (torchvision v2 on tensors, antialiased)
and the same interpolation: mixing back-ends costs ~0.7% top-1 (PAPER.md, pitfalls).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torchvision.transforms import v2
from torchvision.transforms.v2 import InterpolationMode

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# fb.resnet.torch's PCA of ImageNet RGB pixels (AlexNet-style lighting noise).
IMAGENET_EIGVAL = (0.2175, 0.0188, 0.0045)
IMAGENET_EIGVEC = (
    (-0.5675, 0.7192, 0.4009),
    (-0.5808, -0.0045, -0.8140),
    (-0.5836, -0.6948, 0.4203),
)

INTERPOLATIONS = {
    "bilinear": InterpolationMode.BILINEAR,
    "bicubic": InterpolationMode.BICUBIC,
    "nearest": InterpolationMode.NEAREST,
}


class Lighting(torch.nn.Module):
    """AlexNet PCA lighting noise: add ``eigvec @ (alpha * eigval)`` to every pixel.

    ``alpha ~ N(0, std)`` per image and per eigenvector, drawn from torch's RNG (so
    seeded per sample by :class:`~resnext.data.base.TransformedDataset`). Works on
    float images in [0, 1] before normalisation, as fb.resnet.torch does.
    """

    def __init__(
        self,
        std: float = 0.1,
        eigval: Sequence[float] = IMAGENET_EIGVAL,
        eigvec: Sequence[Sequence[float]] = IMAGENET_EIGVEC,
    ) -> None:
        super().__init__()
        self.std = std
        self.register_buffer("eigval", torch.tensor(eigval, dtype=torch.float32))
        self.register_buffer("eigvec", torch.tensor(eigvec, dtype=torch.float32))

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        if self.std == 0:
            return img
        alpha = torch.randn(3) * self.std
        rgb = self.eigvec @ (alpha * self.eigval)  # (3,)
        return img + rgb.to(img.dtype).view(3, 1, 1)


class RandomShorterSideResize(torch.nn.Module):
    """Resize so the shorter side is uniform in [min_size, max_size] (ResNet's scale aug)."""

    def __init__(self, min_size: int, max_size: int, interpolation: InterpolationMode) -> None:
        super().__init__()
        self.min_size, self.max_size, self.interpolation = min_size, max_size, interpolation

    def forward(self, img):
        size = int(torch.randint(self.min_size, self.max_size + 1, (1,)))
        return v2.functional.resize(img, size, interpolation=self.interpolation, antialias=True)


def _to_float() -> list[Callable]:
    return [v2.ToImage(), v2.RGB(), v2.ToDtype(torch.float32, scale=True)]


def train_transform(
    augment: str,
    image_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    interpolation: str = "bilinear",
    color_jitter: float = 0.4,
    pca_lighting: float = 0.1,
) -> v2.Compose:
    """The train-time pipeline.

    Args:
        augment: ``none`` (resize only), ``crop`` (pad 4 px, random crop; no flip: for
            digits), ``cifar`` (pad 4, random crop, flip: paper Appendix),
            ``imagenet`` (random 8%-100% area, aspect 3/4-4/3 crop, flip, colour
            jitter, PCA lighting: paper Sec. 4), ``imagenet_scale`` (shorter side
            random in [256, 480], random crop, flip).
    """
    interp = INTERPOLATIONS[interpolation]
    norm = v2.Normalize(list(mean), list(std))
    if augment == "none":
        ops = [v2.ToImage(), v2.Resize((image_size, image_size), interp, antialias=True)]
        return v2.Compose([*ops, v2.RGB(), v2.ToDtype(torch.float32, scale=True), norm])
    if augment in ("crop", "cifar"):
        ops: list = [
            v2.ToImage(),
            v2.Resize((image_size, image_size), interp, antialias=True),
            v2.RandomCrop(image_size, padding=4),
        ]
        if augment == "cifar":
            ops.append(v2.RandomHorizontalFlip())
        return v2.Compose([*ops, v2.RGB(), v2.ToDtype(torch.float32, scale=True), norm])
    if augment == "imagenet":
        ops = [
            v2.ToImage(),
            v2.RandomResizedCrop(
                image_size,
                scale=(0.08, 1.0),
                ratio=(3 / 4, 4 / 3),
                interpolation=interp,
                antialias=True,
            ),
            v2.RandomHorizontalFlip(),
            v2.RGB(),
            v2.ToDtype(torch.float32, scale=True),
        ]
        if color_jitter > 0:
            ops.append(v2.ColorJitter(color_jitter, color_jitter, color_jitter))
        if pca_lighting > 0:
            ops.append(Lighting(pca_lighting))
        return v2.Compose([*ops, norm])
    if augment == "imagenet_scale":
        lo, hi = round(image_size * 256 / 224), round(image_size * 480 / 224)
        ops = [
            v2.ToImage(),
            RandomShorterSideResize(lo, hi, interp),
            v2.RandomCrop(image_size),
            v2.RandomHorizontalFlip(),
            v2.RGB(),
            v2.ToDtype(torch.float32, scale=True),
        ]
        if color_jitter > 0:
            ops.append(v2.ColorJitter(color_jitter, color_jitter, color_jitter))
        if pca_lighting > 0:
            ops.append(Lighting(pca_lighting))
        return v2.Compose([*ops, norm])
    raise ValueError(
        f"data.augment must be none, crop, cifar, imagenet or imagenet_scale, got {augment!r}"
    )


def eval_transform(
    image_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    resize: int | None = None,
    interpolation: str = "bilinear",
) -> v2.Compose:
    """Resize the shorter side to ``resize`` (default: the image size), centre crop.

    ImageNet's standard is resize 256 -> crop 224 (torchvision V2 weights: 232 -> 224).
    """
    interp = INTERPOLATIONS[interpolation]
    ops: list = [v2.ToImage()]
    if resize is None or resize == image_size:
        ops.append(v2.Resize((image_size, image_size), interp, antialias=True))
    else:
        ops += [v2.Resize(resize, interp, antialias=True), v2.CenterCrop(image_size)]
    ops += [v2.RGB(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std))]
    return v2.Compose(ops)
