"""The paper's transforms: shapes, seeded determinism, PCA lighting, one resize back-end."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import v2

from resnext.data.base import TransformedDataset
from resnext.data.transforms import (
    IMAGENET_EIGVAL,
    IMAGENET_EIGVEC,
    IMAGENET_MEAN,
    IMAGENET_STD,
    INTERPOLATIONS,
    Lighting,
    RandomShorterSideResize,
    ToRGBImage,
    eval_transform,
    train_transform,
)

AUGMENTS = ("none", "crop", "cifar", "imagenet", "imagenet_scale")


def _photo(w: int = 500, h: int = 375) -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


@pytest.mark.parametrize("augment", AUGMENTS)
def test_train_output_shape_and_dtype(augment: str) -> None:
    tf = train_transform(augment, 64, IMAGENET_MEAN, IMAGENET_STD)
    for img in (_photo(100, 75), torch.randint(0, 256, (1, 40, 50), dtype=torch.uint8)):
        x = tf(img)
        assert x.shape == (3, 64, 64) and x.dtype == torch.float32


@pytest.mark.parametrize("augment", AUGMENTS)
def test_augmentation_is_a_function_of_the_sample_seed(augment: str) -> None:
    """Same (index, seed) -> bitwise the same tensor; another seed -> another crop."""
    tf = train_transform(augment, 32, IMAGENET_MEAN, IMAGENET_STD)
    base = [(_photo(60, 45), 0)]
    ds = TransformedDataset(base, tf)
    torch.manual_seed(123)  # the global RNG state must not matter
    a = ds[(0, 7)][0]
    torch.manual_seed(456)
    b = ds[(0, 7)][0]
    assert torch.equal(a, b)
    if augment != "none":
        assert any(not torch.equal(a, ds[(0, s)][0]) for s in range(8, 12))
    # and the caller's RNG stream is left untouched
    torch.manual_seed(5)
    ds[(0, 7)]
    after = torch.rand(1)
    torch.manual_seed(5)
    assert torch.equal(after, torch.rand(1))


def test_pca_lighting_matches_a_hand_computation() -> None:
    torch.manual_seed(11)
    alpha = (torch.randn(3) * 0.1).tolist()
    # fb.resnet.torch: rgb_i = sum_j eigvec[i][j] * alpha[j] * eigval[j]
    rgb = [
        sum(IMAGENET_EIGVEC[i][j] * alpha[j] * IMAGENET_EIGVAL[j] for j in range(3))
        for i in range(3)
    ]
    img = torch.rand(3, 4, 5)
    torch.manual_seed(11)
    out = Lighting(0.1)(img)
    for c in range(3):
        assert torch.allclose(out[c] - img[c], torch.full((4, 5), rgb[c]), atol=1e-7)
    assert torch.equal(Lighting(0.0)(img), img)


def test_imagenet_recipe_is_the_papers() -> None:
    tf = train_transform("imagenet", 224, IMAGENET_MEAN, IMAGENET_STD)
    crop = next(t for t in tf.transforms if isinstance(t, v2.RandomResizedCrop))
    assert crop.scale == (0.08, 1.0) and crop.ratio == pytest.approx((3 / 4, 4 / 3))
    jitter = next(t for t in tf.transforms if isinstance(t, v2.ColorJitter))
    assert jitter.brightness == jitter.contrast == jitter.saturation == (0.6, 1.4)
    assert jitter.hue is None
    assert any(isinstance(t, v2.RandomHorizontalFlip) for t in tf.transforms)
    light = next(t for t in tf.transforms if isinstance(t, Lighting))
    assert light.std == 0.1
    assert isinstance(tf.transforms[-1], v2.Normalize)  # after lighting, as fb.resnet.torch
    scale = train_transform("imagenet_scale", 224, IMAGENET_MEAN, IMAGENET_STD)
    resize = next(t for t in scale.transforms if isinstance(t, RandomShorterSideResize))
    assert (resize.min_size, resize.max_size) == (256, 480)
    torch.manual_seed(0)
    assert scale(_photo()).shape == (3, 224, 224)


def _resize_settings(tf: v2.Compose) -> set[tuple[object, bool]]:
    out = set()
    for t in tf.transforms:
        if isinstance(t, (v2.Resize, v2.RandomResizedCrop)):
            out.add((t.interpolation, bool(t.antialias)))
        elif isinstance(t, RandomShorterSideResize):
            out.add((t.interpolation, True))
    return out


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
@pytest.mark.parametrize("augment", AUGMENTS)
def test_train_and_eval_resize_the_same_way(augment: str, interpolation: str) -> None:
    train = train_transform(augment, 224, IMAGENET_MEAN, IMAGENET_STD, interpolation)
    ev = eval_transform(224, IMAGENET_MEAN, IMAGENET_STD, 256, interpolation)
    # the eval transform (torch alone) resizes antialiased with the configured filter, as
    # torchvision's v2.Resize does (bitwise: tests/data/test_eval_transform.py)
    assert _resize_settings(train) == {(INTERPOLATIONS[ev.interpolation], True)}


def test_eval_resizes_shorter_side_then_centre_crops() -> None:
    img = _photo()  # 500 x 375
    x = eval_transform(224, IMAGENET_MEAN, IMAGENET_STD, 256)(img)
    t = v2.functional.pil_to_tensor(img)
    ref = v2.functional.resize(t, 256, antialias=True)  # 341 x 256, aspect kept
    assert ref.shape[-2:] == (256, 341)
    ref = v2.functional.center_crop(ref, 224).float() / 255
    ref = (ref - torch.tensor(IMAGENET_MEAN).view(3, 1, 1)) / torch.tensor(IMAGENET_STD).view(
        3, 1, 1
    )
    assert torch.allclose(x, ref, atol=1e-5)
    # no eval_resize: the shorter side goes to the crop size (aspect kept, not squashed)
    y = eval_transform(224, IMAGENET_MEAN, IMAGENET_STD)(img)
    ref2 = v2.functional.center_crop(v2.functional.resize(t, 224, antialias=True), 224)
    assert torch.allclose(
        y,
        (ref2.float() / 255 - torch.tensor(IMAGENET_MEAN).view(3, 1, 1))
        / torch.tensor(IMAGENET_STD).view(3, 1, 1),
        atol=1e-5,
    )
    # train "none" is exactly the eval geometry
    z = train_transform("none", 224, IMAGENET_MEAN, IMAGENET_STD)(img)
    assert torch.equal(y, z)


def test_cifar_crop_is_a_zero_padded_shift_or_its_flip() -> None:
    img = torch.randint(1, 256, (3, 32, 32), dtype=torch.uint8)
    tf = train_transform("cifar", 32, (0.0,) * 3, (1.0,) * 3)
    padded = torch.nn.functional.pad(img, (4, 4, 4, 4)).float() / 255
    shifts = set()
    for s in range(30):
        torch.manual_seed(s)
        x = tf(img)
        matches = [
            (i, j, flip)
            for i in range(9)
            for j in range(9)
            for flip in (False, True)
            if torch.allclose(
                x,
                padded[:, i : i + 32, j : j + 32].flip(-1)
                if flip
                else padded[:, i : i + 32, j : j + 32],
            )
        ]
        assert matches, s
        shifts.update(matches)
    assert len({(i, j) for i, j, _ in shifts}) > 5 and {f for _, _, f in shifts} == {False, True}


def test_to_rgb_image_handles_modes_and_rejects_four_channels() -> None:
    to = ToRGBImage()
    gray = torch.randint(0, 256, (1, 5, 6), dtype=torch.uint8)
    out = to(gray)
    assert out.shape == (3, 5, 6) and torch.equal(out[2], gray[0])
    pal = Image.new("RGB", (4, 4), (10, 200, 30)).convert("P", palette=Image.Palette.ADAPTIVE)
    assert to(pal)[:, 0, 0].tolist() == [10, 200, 30]  # colours, not palette indices
    with pytest.raises(ValueError, match="1- or 3-channel"):
        to(torch.zeros(4, 5, 6, dtype=torch.uint8))


def test_unknown_augment_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match=r"data\.augment must be"):
        train_transform("mixup", 32, IMAGENET_MEAN, IMAGENET_STD)


def test_sample_seeding_leaves_cuda_generators_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    """Per-sample seeding touches only the CPU generator (torch.manual_seed would reseed
    every CUDA device, which fork_rng(devices=[]) does not restore)."""
    calls: list[int] = []
    monkeypatch.setattr(torch.cuda, "manual_seed_all", lambda seed: calls.append(seed))
    ds = TransformedDataset([(torch.zeros(3, 8, 8, dtype=torch.uint8), 0)], Lighting(0.1))
    ds[(0, 42)]
    assert calls == []
    torch.manual_seed(0)  # the check itself can fail: this one does reseed CUDA
    assert calls == [0]
