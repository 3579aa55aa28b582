"""The torch-only evaluation transform equals torchvision's v2 pipeline bit for bit."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import v2

from resnext.data.eval_transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    EvalTransform,
    center_crop,
    shorter_side_size,
)
from resnext.data.images import to_rgb


def _reference(size, resize, interpolation, offset, mean=IMAGENET_MEAN, std=IMAGENET_STD):
    """torchvision's v2 transforms, composed as the paper's evaluation (the crop offset
    'ceil' written out with v2's crop)."""
    mode = getattr(v2.InterpolationMode, interpolation.upper())

    def ceil_crop(img):
        h, w = v2.functional.get_size(img)
        return v2.functional.crop(img, -(-(h - size) // 2), -(-(w - size) // 2), size, size)

    def to_image(img):
        img = v2.functional.to_image(to_rgb(img) if isinstance(img, Image.Image) else img)
        if img.shape[-3] == 1:
            img = img.expand(3, *img.shape[-2:])
        return img

    return v2.Compose(
        [
            to_image,
            v2.Resize(resize or size, mode, antialias=True),
            v2.CenterCrop(size) if offset == "round" else ceil_crop,
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(list(mean), list(std)),
        ]
    )


def _photo(w: int, h: int, mode: str = "RGB", seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    # smooth gradients plus noise: resampling filters differ most on such content
    yy, xx = np.mgrid[0:h, 0:w]
    base = (xx * 255 / max(w - 1, 1) + yy * 97 / max(h - 1, 1))[..., None] * [1.0, 0.6, 0.3]
    arr = (base + rng.normal(0, 30, (h, w, 3))).clip(0, 255).astype(np.uint8)
    return Image.fromarray(arr).convert(mode)


SIZES = [(500, 375), (375, 500), (257, 300), (224, 224), (640, 229), (1023, 767)]


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic", "nearest"])
@pytest.mark.parametrize("offset", ["round", "ceil"])
@pytest.mark.parametrize("resize", [None, 256, 232])
def test_pil_images_match_torchvision_bitwise(interpolation, offset, resize) -> None:
    ours = EvalTransform(224, IMAGENET_MEAN, IMAGENET_STD, resize, interpolation, offset)
    ref = _reference(224, resize, interpolation, offset)
    for i, (w, h) in enumerate(SIZES):
        img = _photo(w, h, seed=i)
        a, b = ours(img), ref(img).as_subclass(torch.Tensor)
        assert a.shape == (3, 224, 224) and a.dtype == torch.float32
        assert torch.equal(a, b), (w, h)


@pytest.mark.parametrize("mode", ["L", "P", "RGBA", "CMYK", "I;16"])
def test_other_pil_modes_match_torchvision_bitwise(mode: str) -> None:
    ours = EvalTransform(32, (0.5, 0.4, 0.3), (0.2, 0.25, 0.3), 36, "bilinear")
    ref = _reference(32, 36, "bilinear", "round", (0.5, 0.4, 0.3), (0.2, 0.25, 0.3))
    img = _photo(50, 41, "RGB")
    img = img.convert("RGBA").convert(mode) if mode != "I;16" else img.convert("L").convert("I;16")
    assert torch.equal(ours(img), ref(img).as_subclass(torch.Tensor))


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
@pytest.mark.parametrize(
    "make",
    [
        lambda: torch.randint(0, 256, (3, 40, 57), dtype=torch.uint8),
        lambda: torch.randint(0, 256, (1, 57, 40), dtype=torch.uint8),
        lambda: torch.rand(3, 45, 33),
        lambda: torch.rand(1, 33, 45, dtype=torch.float64),
        lambda: torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8),  # no resize needed
        lambda: torch.randint(0, 256, (40, 50, 3), dtype=torch.uint8).permute(2, 0, 1),
    ],
)
def test_tensors_match_torchvision_bitwise(interpolation, make) -> None:
    torch.manual_seed(0)
    x = make()
    ours = EvalTransform(32, IMAGENET_MEAN, IMAGENET_STD, None, interpolation)
    ref = _reference(32, None, interpolation, "round")
    assert torch.equal(ours(x), ref(x).as_subclass(torch.Tensor))


@pytest.mark.parametrize(
    "make",
    [
        lambda: np.random.default_rng(0).integers(0, 256, (45, 61, 3), dtype=np.uint8),  # HWC
        lambda: np.random.default_rng(1).integers(0, 256, (45, 61), dtype=np.uint8),  # HW
        lambda: torch.randint(0, 256, (45, 61), dtype=torch.uint8),  # HW tensor
        lambda: torch.rand(3, 45, 61, dtype=torch.float16),
        lambda: torch.randint(0, 256, (2, 3, 45, 61), dtype=torch.uint8),  # a batch
    ],
)
def test_arrays_and_other_tensors_match_torchvision_bitwise(make) -> None:
    x = make()
    ours = EvalTransform(32, IMAGENET_MEAN, IMAGENET_STD, 36, "bilinear")
    ref = _reference(32, 36, "bilinear", "round")
    assert torch.equal(ours(x), ref(x).as_subclass(torch.Tensor))


def test_the_reference_is_sensitive_to_what_it_checks() -> None:
    """The bitwise comparisons above would catch a one-pixel crop shift or another filter."""
    img = _photo(500, 375)
    ref = _reference(224, 256, "bilinear", "round")(img)
    bicubic = EvalTransform(224, IMAGENET_MEAN, IMAGENET_STD, 256, "bicubic")
    assert not torch.equal(bicubic(img), ref)
    assert not torch.equal(
        EvalTransform(224, IMAGENET_MEAN, IMAGENET_STD, 256, "bilinear", "ceil")(img), ref
    )  # 341 - 224 = 117: round(58.5) = 58, ceil = 59


def test_geometry_helpers() -> None:
    assert shorter_side_size(375, 500, 256) == (256, 341)
    assert shorter_side_size(500, 375, 256) == (341, 256)
    x = torch.arange(5 * 7).view(1, 5, 7)
    assert center_crop(x, 3)[0, 0].tolist() == [9, 10, 11]  # round(2/2)=1, round(4/2)=2
    with pytest.raises(ValueError, match="smaller than the crop"):
        center_crop(x, 6)


def test_bad_inputs_are_clear_errors() -> None:
    tf = EvalTransform(8, IMAGENET_MEAN, IMAGENET_STD)
    with pytest.raises(ValueError, match="1- or 3-channel"):
        tf(torch.zeros(4, 9, 9, dtype=torch.uint8))
    with pytest.raises(TypeError, match="PIL image or an image tensor"):
        tf("x.jpg")
    with pytest.raises(ValueError, match="interpolation must be one of"):
        EvalTransform(8, IMAGENET_MEAN, IMAGENET_STD, interpolation="lanczos")
    with pytest.raises(ValueError, match="crop_offset must be one of"):
        EvalTransform(8, IMAGENET_MEAN, IMAGENET_STD, crop_offset="floor")
    with pytest.raises(ValueError, match="resize 6 is smaller than the crop 8"):
        EvalTransform(8, IMAGENET_MEAN, IMAGENET_STD, resize=6)
    # 16-bit tensors: torchvision rounds some integer types and not others; refused here
    with pytest.raises(ValueError, match=r"uint8 .* or float .*, got torch\.int16"):
        tf(torch.zeros(3, 9, 9, dtype=torch.int16))


def test_bilinear_without_avx_matches_torchvision(monkeypatch: pytest.MonkeyPatch) -> None:
    """On CPUs without AVX2 both resize uint8 bilinear images through float32 and round."""
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "DEFAULT")
    monkeypatch.setattr("platform.machine", lambda: "x86_64")
    ours = EvalTransform(224, IMAGENET_MEAN, IMAGENET_STD, 256, "bilinear")
    ref = _reference(224, 256, "bilinear", "round")
    img = _photo(500, 375)
    assert torch.equal(ours(img), ref(img).as_subclass(torch.Tensor))


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
def test_ten_crop_matches_torchvisions_ten_crop_bitwise(interpolation: str) -> None:
    from resnext.data import Preprocess

    pre = Preprocess(224, 256, interpolation, IMAGENET_MEAN, IMAGENET_STD)
    mode = getattr(v2.InterpolationMode, interpolation.upper())
    resize = v2.Compose(
        [lambda im: v2.functional.to_image(to_rgb(im)), v2.Resize(256, mode, antialias=True)]
    )
    finish = v2.Compose(
        [v2.ToDtype(torch.float32, scale=True), v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
    )
    for w, h in ((500, 375), (375, 500), (301, 256)):
        img = _photo(w, h)
        want = torch.stack(
            [finish(c).as_subclass(torch.Tensor) for c in v2.TenCrop(224)(resize(img))]
        )
        assert torch.equal(pre.transform(ten_crop=True)(img), want), (w, h)
