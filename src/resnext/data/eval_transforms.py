"""The evaluation transform (shorter side resized, centre crop, scale, normalise) in torch
alone, so that predicting and serving never import torchvision.

It performs exactly the operations torchvision's v2 transforms perform for
``ToImage -> Resize(antialias=True) -> CenterCrop -> ToDtype(float32, scale=True) ->
Normalize`` on the same tensors, in the same memory layout, so its output equals theirs bit
for bit; ``tests/data/test_eval_transform.py`` checks that against the pinned torchvision
(``constraints.txt``) for every interpolation and crop offset, PIL images of every mode, and
uint8 / float tensors and arrays. Training keeps torchvision's transforms
(:mod:`resnext.data.transforms`), so train and eval resize with the same kernel. Older
torchvision releases chose the uint8 bilinear kernel by another CPU test (AVX2 only), so
with them the two can differ in the last bit.
"""

from __future__ import annotations

import platform
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..registry_names import INTERPOLATIONS
from .images import to_rgb

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# the resize filters of the config (data.interpolation) and checkpoints
INTERPOLATION_NAMES = INTERPOLATIONS
# where an odd margin puts the centre crop: round (torchvision) | ceil (fb.resnet.torch)
CROP_OFFSETS = ("round", "ceil")


def check_geometry(size: int, resize: int | None, interpolation: str, crop_offset: str) -> None:
    """Raise ValueError for an evaluation geometry that cannot run: a crop under 1 pixel, a
    resize smaller than the crop, an unknown filter or crop offset."""
    if crop_offset not in CROP_OFFSETS:
        raise ValueError(
            f"crop_offset must be one of {', '.join(CROP_OFFSETS)}, got {crop_offset!r}"
        )
    if size < 1:
        raise ValueError(f"image_size must be at least 1, got {size}")
    if resize is not None and resize < size:
        raise ValueError(
            f"resize {resize} is smaller than the crop {size}; the shorter side must be at "
            "least the crop side"
        )
    if interpolation not in INTERPOLATION_NAMES:
        raise ValueError(
            f"interpolation must be one of {', '.join(INTERPOLATION_NAMES)}, got {interpolation!r}"
        )


def to_image_tensor(img: Image.Image | np.ndarray | torch.Tensor) -> torch.Tensor:
    """A PIL image (any mode), a ``(H, W[, C])`` numpy array or a ``([C, ]H, W)`` tensor ->
    a 3-channel ``(3, H, W)`` image tensor, as torchvision's ``to_image`` makes it: PIL
    images as uint8 in a channels-last view of their pixels, one-channel images expanded to
    three, tensors otherwise as given. Tensors and arrays must be uint8 (0..255) or float
    (0..1)."""
    if isinstance(img, Image.Image):
        rgb = to_rgb(img)
        hwc = torch.from_numpy(np.array(rgb, copy=True)).view(rgb.height, rgb.width, 3)
        return hwc.permute(2, 0, 1)
    if isinstance(img, np.ndarray):
        img = torch.from_numpy(np.atleast_3d(img)).permute(2, 0, 1).contiguous()
    if not isinstance(img, torch.Tensor):
        raise TypeError(f"expected a PIL image or an image tensor, got {type(img).__name__}")
    if img.dtype != torch.uint8 and not img.dtype.is_floating_point:
        raise ValueError(
            f"image tensors must be uint8 (0..255) or float (0..1), got {img.dtype}; convert "
            "it first (e.g. x.float() / x.max() for 16-bit data)"
        )
    if img.ndim == 2:
        img = img.unsqueeze(0)
    channels = img.shape[-3] if img.ndim >= 3 else 0
    if channels == 1:
        return img.expand(*img.shape[:-3], 3, *img.shape[-2:])
    if channels != 3:
        raise ValueError(
            f"expected a 1- or 3-channel image, got shape {tuple(img.shape)}; give RGB images "
            "(uint8 CHW tensors or PIL)"
        )
    return img


def shorter_side_size(height: int, width: int, size: int) -> tuple[int, int]:
    """(height, width) with the shorter side ``size`` and the longer one scaled and
    truncated, as torchvision computes it."""
    short, long = (width, height) if width <= height else (height, width)
    new_long = int(size * long / short)
    return (new_long, size) if width <= height else (size, new_long)


def _native_uint8(interpolation: str) -> bool:
    """Whether torch resizes uint8 images itself (torchvision's rule: bilinear only with
    AVX2/AVX-512 or on ARM, bicubic always, nearest always)."""
    if interpolation == "bilinear":
        return torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512") or (
            platform.machine() in ("aarch64", "arm64")
        )
    return True


def resize_shorter(img: torch.Tensor, size: int, interpolation: str) -> torch.Tensor:
    """Resize a ``(..., C, H, W)`` image so its shorter side is ``size`` (antialiased for
    bilinear and bicubic), keeping its dtype and, for one image, its memory layout."""
    if interpolation not in INTERPOLATION_NAMES:
        raise ValueError(
            f"interpolation must be one of {', '.join(INTERPOLATION_NAMES)}, got {interpolation!r}"
        )
    shape = img.shape
    c, h, w = shape[-3:]
    new_h, new_w = shorter_side_size(h, w, size)
    if (new_h, new_w) == (h, w) or img.numel() == 0:
        return img
    smooth = interpolation != "nearest"
    dtype = img.dtype
    acceptable = {torch.float32, torch.float64}
    if img.device.type == "cpu" and (interpolation == "nearest" or _native_uint8(interpolation)):
        acceptable.add(torch.uint8)
    x = img.reshape(-1, c, h, w)
    strides = x.stride()
    if (
        x.is_contiguous(memory_format=torch.channels_last)
        and x.shape[0] == 1
        and x.numel() != strides[0]
    ):
        # torch would allocate a contiguous output for a 1CHW channels-last input; restride it
        # (as torchvision does) so the output stays channels-last, the layout of PIL's pixels.
        x = x.as_strided((1, c, h, w), (x.numel(), *strides[1:]))
    cast = dtype not in acceptable
    if cast:
        x = x.to(torch.float32)
    x = torch.nn.functional.interpolate(
        x,
        size=[new_h, new_w],
        mode=interpolation,
        align_corners=False if smooth else None,
        antialias=smooth,
    )
    if cast:
        if interpolation == "bicubic" and dtype == torch.uint8:
            x = x.clamp_(min=0, max=255)
        if not dtype.is_floating_point:
            x = x.round_()
        x = x.to(dtype)
    return x.reshape((*shape[:-3], c, new_h, new_w))


def center_crop(img: torch.Tensor, size: int, offset: str = "round") -> torch.Tensor:
    """The central ``size`` x ``size`` window (a view). ``offset`` for an odd margin:
    ``round`` = torchvision's ``round(margin / 2)`` (half to even), ``ceil`` =
    fb.resnet.torch's ``ceil(margin / 2)``."""
    h, w = img.shape[-2:]
    top, left = crop_origin(h, w, size, offset)
    return img[..., top : top + size, left : left + size]


def crop_origin(height: int, width: int, size: int, offset: str = "round") -> tuple[int, int]:
    """(top, left) of :func:`center_crop`'s window in a ``height`` x ``width`` image (also
    what class activation maps use to put a crop's map back into the image)."""
    h, w = height, width
    if h < size or w < size:
        raise ValueError(f"image {w}x{h} is smaller than the crop {size}")
    if offset == "round":
        return round((h - size) / 2.0), round((w - size) / 2.0)  # half to even
    if offset == "ceil":
        return -(-(h - size) // 2), -(-(w - size) // 2)
    raise ValueError(f"crop_offset must be one of {', '.join(CROP_OFFSETS)}, got {offset!r}")


def scale_to_float(img: torch.Tensor) -> torch.Tensor:
    """uint8 images -> float32 in [0, 1] (divided by 255); float images -> float32 as they
    are."""
    if img.dtype == torch.float32:
        return img
    if img.dtype.is_floating_point:
        return img.to(torch.float32)
    if img.dtype != torch.uint8:
        raise ValueError(f"image tensors must be uint8 or float, got {img.dtype}")
    return img.to(torch.float32).mul_(1.0 / 255)


class EvalTransform:
    """PIL image or uint8/float ``(C, H, W)`` tensor -> the normalised float ``(3, S, S)``
    tensor a model is evaluated on: shorter side to ``resize`` (default: the crop size),
    centre crop ``size``, scaled to [0, 1], ``(x - mean) / std``.

    ImageNet's standard is resize 256 -> crop 224 (torchvision V2 weights: 232 -> 224).
    ``crop_offset``: ``round`` (torchvision) or ``ceil`` (fb.resnet.torch) where the margin
    is odd.
    """

    def __init__(
        self,
        size: int,
        mean: Sequence[float],
        std: Sequence[float],
        resize: int | None = None,
        interpolation: str = "bilinear",
        crop_offset: str = "round",
    ) -> None:
        check_geometry(size, resize, interpolation, crop_offset)
        if any(s == 0 for s in std):
            raise ValueError(f"std {tuple(std)} holds a zero")
        self.size, self.resize = size, resize if resize is not None else size
        self.interpolation, self.crop_offset = interpolation, crop_offset
        self.mean = torch.tensor(list(mean), dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.tensor(list(std), dtype=torch.float32).view(-1, 1, 1)

    def __call__(self, img: Any) -> torch.Tensor:
        return self.normalise(center_crop(self.resized(img), self.size, self.crop_offset))

    def resized(self, img: Any) -> torch.Tensor:
        """The image as a 3-channel tensor with its shorter side at ``resize``."""
        return resize_shorter(to_image_tensor(img), self.resize, self.interpolation)

    def normalise(self, crop: torch.Tensor) -> torch.Tensor:
        """A crop scaled to [0, 1] and normalised: ``(x - mean) / std``."""
        x = scale_to_float(crop)
        if x.device != self.mean.device:  # e.g. a CUDA image tensor
            self.mean, self.std = self.mean.to(x.device), self.std.to(x.device)
        return x.sub(self.mean).div_(self.std)

    def __repr__(self) -> str:
        return (
            f"EvalTransform(resize {self.resize} -> crop {self.size}, {self.interpolation}, "
            f"offset {self.crop_offset})"
        )


#: The eval transform by its function name (``eval_transform(size, mean, std, resize, ...)``).
eval_transform = EvalTransform
