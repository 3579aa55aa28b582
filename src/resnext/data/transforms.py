"""The paper's train transforms, built from torchvision's v2 transforms; the eval transform
(:func:`~resnext.data.eval_transforms.eval_transform`, re-exported here) is written in torch alone
and equals torchvision's v2 resize/crop bit for bit (tested).

Inputs are PIL images (any mode) or uint8 CHW tensors with 1 or 3 channels; outputs are
float CHW RGB tensors, normalised. Train and eval use the same resize kernel (torch's
antialiased resize on uint8 tensors, called by torchvision v2 here and by
:mod:`resnext.data.eval_transforms` directly) and the same interpolation: mixing
back-ends costs ~0.7% top-1 (PAPER.md, pitfalls). Every resize keeps the aspect ratio
(shorter side, then a crop), so train and eval see objects with the same proportions.
Random draws come from torch's global RNG, which
:class:`~resnext.data.base.TransformedDataset` seeds per (seed, epoch, index).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from PIL import Image
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import InterpolationMode

from ..registry_names import AUGMENTATIONS
from .eval_transforms import CROP_OFFSETS as CROP_OFFSETS
from .eval_transforms import IMAGENET_MEAN as IMAGENET_MEAN  # re-exported with the eval side
from .eval_transforms import IMAGENET_STD as IMAGENET_STD
from .eval_transforms import INTERPOLATION_NAMES
from .eval_transforms import eval_transform as eval_transform
from .images import to_rgb

# fb.resnet.torch's PCA of ImageNet RGB pixels (AlexNet-style lighting noise).
IMAGENET_EIGVAL = (0.2175, 0.0188, 0.0045)
IMAGENET_EIGVEC = (
    (-0.5675, 0.7192, 0.4009),
    (-0.5808, -0.0045, -0.8140),
    (-0.5836, -0.6948, 0.4203),
)

INTERPOLATIONS = {name: InterpolationMode(name) for name in INTERPOLATION_NAMES}


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


class ToRGBImage(torch.nn.Module):
    """PIL image (any mode) or uint8 tensor -> 3-channel uint8 image tensor.

    PIL images go through :func:`~resnext.data.images.to_rgb` first: converting a palette
    or 16-bit image after ``ToImage`` would resize palette indices or clip at 255.
    """

    def forward(self, img):
        if isinstance(img, Image.Image):
            img = to_rgb(img)
        img = v2.functional.to_image(img)
        channels = img.shape[-3]
        if channels == 1:
            return tv_tensors.Image(img.expand(*img.shape[:-3], 3, *img.shape[-2:]))
        if channels != 3:
            raise ValueError(
                f"expected a 1- or 3-channel image, got {channels} channels of shape "
                f"{tuple(img.shape)}; give RGB images (uint8 CHW tensors or PIL)"
            )
        return img


class RandomShorterSideResize(torch.nn.Module):
    """Resize so the shorter side is uniform in [min_size, max_size] (ResNet's scale aug)."""

    def __init__(self, min_size: int, max_size: int, interpolation: InterpolationMode) -> None:
        super().__init__()
        self.min_size, self.max_size, self.interpolation = min_size, max_size, interpolation

    def forward(self, img):
        size = int(torch.randint(self.min_size, self.max_size + 1, (1,)))
        return v2.functional.resize(img, size, interpolation=self.interpolation, antialias=True)


def _resize_crop(size: int, interp: InterpolationMode) -> list[Callable]:
    """Shorter side to ``size``, centre crop ``size`` (a no-op on square ``size`` images)."""
    return [v2.Resize(size, interp, antialias=True), v2.CenterCrop(size)]


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
        augment: ``none`` (shorter side to ``image_size``, centre crop), ``crop`` (pad
            4 px, random crop; no flip: for digits), ``cifar`` (pad 4, random crop,
            flip: paper Appendix),
            ``imagenet`` (random 8%-100% area, aspect 3/4-4/3 crop, flip, colour
            jitter, PCA lighting: paper Sec. 4), ``imagenet_scale`` (shorter side
            random in [256, 480], random crop, flip).
    """
    interp = INTERPOLATIONS[interpolation]
    norm = v2.Normalize(list(mean), list(std))
    to_float = v2.ToDtype(torch.float32, scale=True)
    if augment == "none":
        return v2.Compose([ToRGBImage(), *_resize_crop(image_size, interp), to_float, norm])
    if augment in ("crop", "cifar"):
        # Paper Appendix: pad 4 px with zeros, random 32x32 crop (, flip).
        ops: list = [
            ToRGBImage(),
            *_resize_crop(image_size, interp),
            v2.RandomCrop(image_size, padding=4),
        ]
        if augment == "cifar":
            ops.append(v2.RandomHorizontalFlip())
        return v2.Compose([*ops, to_float, norm])
    if augment in ("imagenet", "imagenet_scale"):
        if augment == "imagenet":
            geometry: list = [
                v2.RandomResizedCrop(
                    image_size,
                    scale=(0.08, 1.0),
                    ratio=(3 / 4, 4 / 3),
                    interpolation=interp,
                    antialias=True,
                )
            ]
        else:
            lo, hi = round(image_size * 256 / 224), round(image_size * 480 / 224)
            geometry = [RandomShorterSideResize(lo, hi, interp), v2.RandomCrop(image_size)]
        ops = [ToRGBImage(), *geometry, v2.RandomHorizontalFlip(), to_float]
        if color_jitter > 0:
            ops.append(v2.ColorJitter(color_jitter, color_jitter, color_jitter))
        if pca_lighting > 0:
            ops.append(Lighting(pca_lighting))
        return v2.Compose([*ops, norm])
    raise ValueError(f"data.augment must be one of {', '.join(AUGMENTATIONS)}, got {augment!r}")
