"""Class activation maps: the identity they rest on (mean of a map + bias = the logit) for
every block form and both families, their geometry (the image's own size, the crop margin,
EXIF), the back-ends, the refusal of other heads, and localisation by a trained model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from helpers import tiny_checkpoint, train_tiny_digits
from resnext import Classifier, RuntimeOptions
from resnext.data import DIGITS_CLASSES, Preprocess
from resnext.data.digits import DIGITS_MEAN, DIGITS_STD, digits_splits
from resnext.errors import WeightsError
from resnext.inference.explain import class_maps
from resnext.models import ResNeXt

EAGER = RuntimeOptions(device="cpu", backend="eager")
DIGITS_PRE = Preprocess(image_size=32, mean=DIGITS_MEAN, std=DIGITS_STD)


@pytest.fixture(scope="module")
def test_digits() -> list[tuple[torch.Tensor, int]]:
    """The digits test split: uint8 (3, 32, 32) images and their labels."""
    _, _, test = digits_splits(0.1, 0.2, 0)
    return [test[i] for i in range(len(test))]


def _randomised(model: ResNeXt, seed: int) -> ResNeXt:
    """``model`` with random BN statistics and affine parameters too (at init they are the
    identity, which would hide a map that skipped them)."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(n, generator=g) * 0.1)
    return model.eval()


@pytest.mark.parametrize("family", ["imagenet", "cifar"])
@pytest.mark.parametrize("form", ["a", "b", "c"])
def test_mean_of_each_map_plus_bias_is_the_logit(family: str, form: str, test_digits) -> None:
    torch.manual_seed(0)
    depth, widths, size = (26, (16, 32, 64, 128), 224) if family == "imagenet" else (29, None, 32)
    widths = widths or (16, 32, 64)
    model = ResNeXt(depth, 2, 4, family, num_classes=10, block_form=form, stem_width=8,
                    widths=widths)  # fmt: skip
    model = _randomised(model, seed=1).double()
    pre = Preprocess.for_input_size(size)  # ImageNet: resize 256 -> crop 224
    x = pre.transform()(test_digits[0][0])[None].double()  # a real digit
    every = torch.arange(10)[None]
    maps, logits = class_maps(model, x, every)
    with torch.no_grad():
        want = model(x)[0]  # the plain forward: stages, pooling, fc
    got = maps[0].mean(dim=(1, 2)) + model.fc.bias
    assert maps.shape == (1, 10, *((7, 7) if family == "imagenet" else (8, 8)))
    assert want.abs().max() > 0.1  # not a trivially zero network
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
    torch.testing.assert_close(logits[0], want, rtol=0, atol=1e-5)


def test_classifier_explains_its_own_predictions(tmp_path: Path, test_digits) -> None:
    clf = Classifier.from_checkpoint(tiny_checkpoint(tmp_path / "c.pt"), runtime=EAGER)
    images = [img for img, _ in test_digits[:5]]
    explained = clf.explain(images, topk=3, batch_size=2)
    predicted = clf.predict(images, topk=3)
    assert len(explained) == 5
    for e, top in zip(explained, predicted, strict=True):
        assert e.classes == [c for c, _ in top]
        np.testing.assert_allclose(e.probabilities, [p for _, p in top], atol=1e-6)
        assert e.maps.shape == (3, 32, 32) and e.maps.dtype == np.float32
        assert e.grid.dtype == torch.float32 and e.grid.shape == (3, 8, 8)
        assert e.inside.all()  # a 32 x 32 digit is the crop: nothing cut away
        means = e.grid.double().mean(dim=(1, 2)) + torch.tensor(e.bias, dtype=torch.float64)
        np.testing.assert_allclose(means.numpy(), e.logits, rtol=0, atol=1e-5)
        assert e.image.shape == (32, 32, 3) and e.image.dtype == np.uint8


def _margins(maps: np.ndarray) -> tuple[range, range]:
    """The rows and columns of the map that are inside the crop (not NaN)."""
    inside = ~np.isnan(maps[0])
    rows, cols = np.flatnonzero(inside.any(axis=1)), np.flatnonzero(inside.any(axis=0))
    assert inside[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1].all()  # one rectangle
    assert inside.sum() == len(rows) * len(cols)
    return range(rows[0], rows[-1] + 1), range(cols[0], cols[-1] + 1)


def test_maps_come_back_at_the_images_size_with_the_crop_margin_marked(tmp_path) -> None:
    ckpt = tiny_checkpoint(tmp_path / "c.pt")
    model = Classifier.from_checkpoint(ckpt, runtime=EAGER).model
    rng = np.random.default_rng(0)

    def photo(h: int, w: int) -> Image.Image:
        return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))

    # resize 64 -> crop 56: a 128 x 128 image is halved, and 4 resized pixels (8 of the
    # image) are cut away on every side.
    cropping = Classifier(model, DIGITS_CLASSES, Preprocess(56, 64, mean=DIGITS_MEAN,
                                                            std=DIGITS_STD), EAGER)  # fmt: skip
    (square,) = cropping.explain(photo(128, 128))
    assert square.maps.shape == (1, 128, 128)
    assert _margins(square.maps) == (range(8, 120), range(8, 120))
    # 100 x 200 -> 64 x 128, crop at top 4, left 36: image rows whose centre lands in the
    # crop, (i + 0.5) * 0.64 - 4 in [0, 56], are 6..93; columns, (j + 0.5) * 0.64 - 36, 56..143.
    (wide,) = cropping.explain(photo(100, 200))
    assert wide.maps.shape == (1, 100, 200)
    assert _margins(wide.maps) == (range(6, 94), range(56, 144))
    # the digits preprocessing (resize straight to the crop) still crops a non-square image
    plain = Classifier(model, DIGITS_CLASSES, DIGITS_PRE, EAGER)
    (tall,) = plain.explain(photo(90, 45), topk=2)
    assert tall.maps.shape == (2, 90, 45)
    rows, cols = _margins(tall.maps)
    assert cols == range(45) and rows.start > 0 and rows.stop < 90
    assert rows.start + rows.stop == 90  # centred


def test_an_exif_rotated_photos_map_is_upright_like_the_photo(tmp_path: Path) -> None:
    clf = Classifier.from_checkpoint(tiny_checkpoint(tmp_path / "c.pt"), runtime=EAGER)
    upright = np.zeros((48, 32, 3), dtype=np.uint8)  # tall, a bright block at the top left
    upright[4:20, 4:20] = 255
    Image.fromarray(upright).save(tmp_path / "upright.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # stored turned 90 degrees anticlockwise; shown turned back clockwise
    Image.fromarray(upright).transpose(Image.Transpose.ROTATE_90).save(
        tmp_path / "stored.png", exif=exif
    )
    assert Image.open(tmp_path / "stored.png").size == (48, 32)  # as stored: wide
    a, b = clf.explain([tmp_path / "upright.png", tmp_path / "stored.png"], topk=2)
    assert b.maps.shape == (2, 48, 32) and b.image.shape == (48, 32, 3)
    np.testing.assert_array_equal(b.image, upright)
    np.testing.assert_array_equal(b.maps, a.maps)


class _MaxPooled(ResNeXt):
    """A head of global max pooling: the map's mean is not the logit."""

    def __init__(self) -> None:
        super().__init__(29, 2, 4, "cifar", num_classes=10, stem_width=8, widths=(16, 32, 64))
        self.avgpool = nn.AdaptiveMaxPool2d(1)


class _TwoLayerHead(ResNeXt):
    def __init__(self) -> None:
        super().__init__(29, 2, 4, "cifar", num_classes=10, stem_width=8, widths=(16, 32, 64))
        self.hidden = nn.Linear(64, 64)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return self.fc(torch.relu(self.hidden(torch.flatten(self.avgpool(x), 1))))


class _NotResNeXt(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.avgpool(self.conv(x)), 1))


@pytest.mark.parametrize("make", [_MaxPooled, _TwoLayerHead, _NotResNeXt])
def test_a_head_other_than_gap_and_linear_is_refused(make) -> None:
    clf = Classifier(make().eval(), DIGITS_CLASSES, DIGITS_PRE, EAGER)
    assert len(clf.predict(torch.zeros(3, 32, 32, dtype=torch.uint8))[0]) == 5  # it predicts
    with pytest.raises(WeightsError, match="global average pooling and one linear") as info:
        clf.explain(torch.zeros(3, 32, 32, dtype=torch.uint8))
    assert "\n" not in str(info.value) and make.__name__ in str(info.value)


@pytest.mark.slow  # an ONNX export, and bf16 emulated on CPUs without it
@pytest.mark.filterwarnings("ignore:precision=bf16 on a CPU")
def test_other_back_ends_get_the_eager_fp32_maps(tmp_path: Path, test_digits) -> None:
    ckpt = tiny_checkpoint(tmp_path / "c.pt")
    images = [img for img, _ in test_digits[:4]]
    eager = Classifier.from_checkpoint(ckpt, runtime=EAGER).explain(images, topk=3)
    for runtime in (
        RuntimeOptions(device="cpu", backend="onnxruntime"),
        RuntimeOptions(device="cpu", backend="eager", precision="bf16"),
    ):
        clf = Classifier.from_checkpoint(ckpt, runtime=runtime)
        predicted = clf.predict(images, topk=3)
        explained = clf.explain(images, topk=3)
        for e, ref, top in zip(explained, eager, predicted, strict=True):
            assert e.classes == [c for c, _ in top]  # the back-end's classes are explained
            assert e.eager_classes == ref.classes  # ... beside the eager fp32 model's ranking
            assert e.agrees == (e.classes == ref.classes)
            assert e.grid.dtype == torch.float32
            for c, grid in zip(e.classes, e.grid, strict=True):
                if c in ref.classes:  # the same class: the same eager fp32 map, bit for bit
                    assert torch.equal(grid, ref.grid[ref.classes.index(c)])


# --- localisation: a trained model's heat lies on the digit -----------------------------


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_tiny_digits(tmp_path_factory.mktemp("trained"))


@pytest.mark.slow
def test_a_trained_models_heat_lies_in_the_quadrant_holding_the_digit(
    trained: Path, test_digits
) -> None:
    # The digit keeps its training scale (32 x 32) in one quadrant of a black 64 x 64
    # canvas, and the network sees the whole canvas (its layers are all convolutions). As in
    # the CAM paper's localisation, the map asked is the digit's own class's: on a canvas
    # three quarters black a briefly trained model's top-1 is often wrong (mostly "1").
    model = Classifier.from_checkpoint(trained, runtime=EAGER).model
    clf = Classifier(model, DIGITS_CLASSES, Preprocess(64, mean=DIGITS_MEAN, std=DIGITS_STD),
                     EAGER)  # fmt: skip
    n = 40
    canvases, quadrants = [], []
    for i in range(n):
        q = i % 4
        canvas = torch.zeros(3, 64, 64, dtype=torch.uint8)
        top, left = 32 * (q // 2), 32 * (q % 2)
        canvas[:, top : top + 32, left : left + 32] = test_digits[i][0]
        canvases.append(canvas)
        quadrants.append(q)
    hits = 0
    for i, e in enumerate(clf.explain(canvases, topk=10)):
        cam = e.maps[e.classes.index(str(test_digits[i][1]))]
        peak = cam.reshape(2, 32, 2, 32).max(axis=(1, 3)).ravel()  # hottest point per quadrant
        hits += int(peak.argmax() == quadrants[i])
    # 39 of 40 measured with this recipe (chance: 10)
    assert hits >= 32, f"the heat peaked in the digit's quadrant on {hits} of {n} canvases"
