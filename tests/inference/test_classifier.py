"""resnext.Classifier: checkpoints and weights files to predictions, with exact preprocessing."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

import resnext
from helpers import tiny_checkpoint
from resnext import Classifier, RuntimeOptions, create_model
from resnext.checkpoint import WeightsError
from resnext.config import from_dict
from resnext.data import DIGITS_CLASSES, Preprocess, build_splits, load_image
from resnext.inference import ImageError, imagenet_classes
from resnext.models import default_input_size


def test_imagenet_class_names_are_the_synset_lemmas() -> None:
    from torchvision.models import ResNet50_Weights

    names = imagenet_classes()
    assert len(names) == 1000
    # Two synsets share the lemma "crane" (the bird n02012849, the machine n03126707).
    assert len(set(names)) == 999 and names[134] == names[517] == "crane"
    assert names[0] == "tench, Tinca tinca"
    assert names[1] == "goldfish, Carassius auratus"
    assert names[999] == "toilet tissue, toilet paper, bathroom tissue"
    # torchvision's short names are the first lemma, except two it disambiguates.
    short = ResNet50_Weights.IMAGENET1K_V1.meta["categories"]
    differ = [i for i in range(1000) if names[i].split(",")[0] != short[i]]
    assert differ == [134, 639]  # "crane bird" (vs 517 crane), "maillot tank suit"


def test_predict_uses_exactly_the_eval_preprocessing(tmp_path: Path) -> None:
    ckpt = tiny_checkpoint(tmp_path / "c.pt", classes=list(DIGITS_CLASSES))
    clf = Classifier.from_checkpoint(ckpt, runtime=RuntimeOptions(device="cpu"))
    assert resnext.Classifier is Classifier
    splits = build_splits(from_dict({"data": {"test_fraction": 0.05}}).data)
    raw = splits.test.base  # uint8 (3, 32, 32) digits
    x, _ = splits.test[0]  # what evaluation and training's validation feed the model
    with torch.no_grad():
        want = clf.model(x[None]).softmax(1)[0]

    img = raw[0][0]
    png = tmp_path / "d.png"
    Image.fromarray(img[0].numpy()).save(png)  # grayscale PNG, as a user would have it
    inputs = [img, img.float() / 255, Image.open(png), png, str(png)]
    probs = clf.predict_proba(inputs)
    for p in probs:
        torch.testing.assert_close(p, want, rtol=0, atol=1e-6)

    top = clf.predict(png, topk=3)
    assert len(top) == 1 and len(top[0]) == 3
    assert top[0][0] == (str(int(want.argmax())), pytest.approx(float(want.max()), abs=1e-6))
    assert [p for _, p in top[0]] == sorted((p for _, p in top[0]), reverse=True)
    assert len(clf.predict(img, topk=50)[0]) == 10  # k above the class count: all classes


def test_a_batch_tensor_is_many_images(tmp_path: Path) -> None:
    clf = Classifier.from_checkpoint(
        tiny_checkpoint(tmp_path / "c.pt"), runtime=RuntimeOptions(device="cpu")
    )
    batch = torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8)
    together = clf.predict_proba(batch, batch_size=2)
    alone = torch.cat([clf.predict_proba(b) for b in batch])
    torch.testing.assert_close(together, alone, rtol=0, atol=1e-6)
    assert clf.classes == [str(i) for i in range(10)]  # no stored names, 10 classes: indices


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    im = Image.new("RGB", (40, 20), (255, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees when displayed
    im.save(tmp_path / "r.jpg", exif=exif)
    out = load_image(tmp_path / "r.jpg")
    assert out.size == (20, 40) and out.mode == "RGB"


def test_bad_inputs_give_clear_errors(tmp_path: Path) -> None:
    clf = Classifier.from_checkpoint(
        tiny_checkpoint(tmp_path / "c.pt"), runtime=RuntimeOptions(device="cpu")
    )
    (tmp_path / "x.png").write_text("not an image")
    with pytest.raises(ImageError, match=r"x\.png"):
        clf.predict(tmp_path / "x.png")
    with pytest.raises(ValueError, match=r"\(C, H, W\)"):
        clf.predict(torch.zeros(5, 8, 8))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        clf.predict(torch.full((3, 8, 8), 200.0))
    with pytest.raises(TypeError, match="path, a PIL image or a tensor"):
        clf.predict([42])
    with pytest.raises(WeightsError, match="no EMA"):
        Classifier.from_checkpoint(tmp_path / "c.pt", use_ema=True)


def test_from_weights_reads_the_class_count_and_uses_imagenet_names(tmp_path: Path) -> None:
    model = create_model("resnext29_2x4d", num_classes=1000)
    torch.save(model.state_dict(), tmp_path / "w.pth")
    clf = Classifier.from_weights(
        "resnext29_2x4d",
        tmp_path / "w.pth",
        preprocess={"mean": (0.5,) * 3},
        runtime=RuntimeOptions(device="cpu"),
    )
    assert clf.num_classes == 1000 and clf.classes[0] == "tench, Tinca tinca"
    assert clf.preprocess == Preprocess(32, None, "bilinear", (0.5,) * 3, (0.229, 0.224, 0.225))
    pairs = clf.predict(torch.zeros(3, 32, 32, dtype=torch.uint8), topk=2)[0]
    assert all(name in imagenet_classes() for name, _ in pairs)
    with pytest.raises(WeightsError, match="do not fit"):
        Classifier.from_weights("resnext29_4x4d", tmp_path / "w.pth")
    with pytest.raises(WeightsError, match="3 class names"):
        Classifier.from_weights("resnext29_2x4d", tmp_path / "w.pth", classes=["a", "b", "c"])


def test_preprocess_defaults_and_larger_crop() -> None:
    pre = Preprocess.for_input_size(default_input_size("resnext50_32x4d"))
    assert (pre.image_size, pre.eval_resize) == (224, 256)
    assert pre.with_crop(320).eval_resize == 366  # 320 * 256 / 224 = 365.7: the same ratio
    assert pre.with_crop(320, 320) == Preprocess(320, 320)
    assert pre.with_crop(resize=288) == Preprocess(224, 288)
    assert Preprocess(32).with_crop(40) == Preprocess(40)  # no resize stored: resize to crop
    x = pre.with_crop(320).transform()(torch.zeros(3, 400, 500, dtype=torch.uint8))
    assert x.shape == (3, 320, 320)
    with pytest.raises(ValueError, match="smaller than the crop"):
        pre.with_crop(320, 300)
    with pytest.raises(WeightsError, match="unknown preprocess keys"):
        Preprocess.from_dict({"image_size": 32, "crop_pct": 0.9})


def test_ceil_crop_offset_is_fb_resnet_torchs_and_ten_crop_keeps_it() -> None:
    """fb.resnet.torch's centre crop starts at ceil((W - S) / 2); torchvision's rounds half to
    even. With a margin of 77 (1 mod 4) they start at 39 and 38; ten-crop's centre crop is
    always the single crop."""
    x = torch.randint(0, 255, (3, 256, 301), dtype=torch.uint8)
    ceil, rnd = Preprocess(224, 256, crop_offset="ceil"), Preprocess(224, 256)
    a, b = ceil.transform()(x), rnd.transform()(x)
    norm = rnd.transform()(x[:, :, 1:])  # the same image one pixel to the left
    assert not torch.equal(a, b) and torch.equal(a, norm)
    for pre, single in ((ceil, a), (rnd, b)):
        assert torch.equal(pre.transform(ten_crop=True)(x)[4], single)
    with pytest.raises(WeightsError, match="crop_offset must be one of round, ceil"):
        Preprocess.from_dict({"image_size": 32, "crop_offset": "floor"})
