"""configs/finetune_imagefolder.yaml end to end: torchvision-named weights -> a folder of real
image files -> a fine-tuned checkpoint that `resnext eval` and `resnext predict` agree with.

No download is possible here, so "torchvision's weights" are torchvision's own
``resnext50_32x4d`` state dict, built with ``weights=None`` and saved with ``torch.save``:
the file torchvision writes, with its key names and shapes, just not its ImageNet values.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image, ImageDraw

from helpers import REPO
from resnext.checkpoint import load_checkpoint
from resnext.cli import main
from resnext.config import load_config
from resnext.models import create_model

RECIPE = REPO / "configs" / "finetune_imagefolder.yaml"
# Class = colour and shape; the folder names are the class names, in sorted order.
SHAPES = {
    "blue_square": (40, 70, 220),
    "green_triangle": (40, 190, 60),
    "red_circle": (220, 40, 40),
}
CLASSES = sorted(SHAPES)
PER_CLASS = {"train": 16, "val": 4, "test": 6}
# What keeps the recipe fast on a 2-core CPU; everything else (model, normalisation,
# augmentation, optimizer, schedule, label smoothing) is the recipe's.
FAST = [
    "data.image_size=64",
    "data.eval_resize=72",  # the recipe's 256/224 ratio, roughly
    "data.test_dir=test",
    "data.num_workers=0",
    "train.batch_size=8",  # 48 train images: 6 steps an epoch
    "train.epochs=4",  # the recipe's cosine over 4 epochs, not its 10
    "train.threads=2",
    "train.progress=false",
    "train.tensorboard=false",
]


pytestmark = pytest.mark.usefixtures("restore_torch_globals")


def _draw(name: str, rng: np.random.Generator, size: int = 64) -> Image.Image:
    """A filled shape of the class's colour (jittered) at a random place on grey noise."""
    img = Image.fromarray(rng.integers(100, 156, size=(size, size, 3), dtype=np.uint8))
    r = int(rng.integers(16, 26))
    cx, cy = (int(v) for v in rng.integers(r, size - r, 2))
    colour = tuple(int(np.clip(c + rng.integers(-20, 21), 0, 255)) for c in SHAPES[name])
    draw, box = ImageDraw.Draw(img), [cx - r, cy - r, cx + r, cy + r]
    shape = name.split("_")[1]
    if shape == "circle":
        draw.ellipse(box, fill=colour)
    elif shape == "square":
        draw.rectangle(box, fill=colour)
    else:
        draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=colour)
    return img


def write_shapes(root: Path) -> Path:
    """root/{train,val,test}/<class>/NNN.{jpg,png}: real files, half JPEG, half PNG."""
    rng = np.random.default_rng(0)
    for split, n in PER_CLASS.items():
        for name in CLASSES:
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(n):
                _draw(name, rng).save(folder / f"{i:03d}.{'png' if i % 2 else 'jpg'}")
    return root


def torchvision_weights(path: Path, arch: str = "resnext50_32x4d") -> Path:
    """A torchvision state dict, as ``torch.save(model.state_dict())`` writes it.

    ``zero_init_residual`` (torchvision's own option) starts every block's last BN at 0, so
    this untrained 50-layer net passes colour and shape through its residual path the way
    trained weights would, and a few epochs learn the shapes.
    """
    torch.manual_seed(1)
    model = getattr(torchvision.models, arch)(weights=None, zero_init_residual=True)
    torch.save(model.state_dict(), path)
    return path


def test_the_recipe_is_torchvisions_model_with_a_fine_tuning_schedule() -> None:
    cfg = load_config(RECIPE)
    m, d, o, s, t = cfg.model, cfg.data, cfg.optim, cfg.schedule, cfg.train
    # The shapes of torchvision's resnext50_32x4d, so its file loads strictly.
    assert (m.name, m.stem_width, m.widths, m.num_classes) == ("resnext50_32x4d", 64, None, None)
    assert m.pretrained == "/path/to/resnext50_32x4d-7cdf4587.pth"  # a placeholder to override
    assert (d.name, d.root, d.train_dir, d.val_dir) == (
        "imagefolder",
        "/path/to/images",
        "train",
        "val",
    )
    # torchvision's evaluation of the V1 weights: bilinear resize 256, centre crop 224.
    assert (d.image_size, d.eval_resize, d.interpolation) == (224, 256, "bilinear")
    assert (d.mean, d.std) == ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    assert (d.augment, d.color_jitter, d.pca_lighting) == ("imagenet", 0.0, 0.0)
    assert (o.name, o.lr, o.lr_base_batch, o.weight_decay, o.no_decay_bn_bias) == (
        "sgd",
        0.01,
        32,
        1e-4,
        True,
    )
    assert (s.name, s.warmup_epochs, s.min_lr) == ("cosine", 1.0, 0.0)
    assert (t.epochs, t.batch_size, t.label_smoothing, t.ema_decay) == (10, 32, 0.1, None)


@pytest.mark.slow
def test_fine_tunes_torchvision_weights_on_an_image_folder_then_evals_and_predicts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = write_shapes(tmp_path / "shapes")
    weights = torchvision_weights(tmp_path / "resnext50_32x4d.pth")
    runs = tmp_path / "runs"
    common = [
        "train",
        str(RECIPE),
        f"data.root={data}",
        f"train.output_dir={runs}",
        *FAST,
    ]

    # A file of another architecture (ResNet-50: paths 64 wide, not 32 x 4 = 128, in layer1)
    # is refused before any step, naming the keys whose shapes differ.
    wrong = torchvision_weights(tmp_path / "resnet50.pth", "resnet50")
    assert main([*common, f"model.pretrained={wrong}", "train.run_name=wrong"]) == 2
    err = capsys.readouterr().err
    assert "do not fit this model: 176 shape mismatches" in err
    assert "layer1.0.bn1.bias: file (64,) vs model (128,)" in err
    assert not (runs / "wrong" / "last.pt").exists()

    assert main([*common, f"model.pretrained={weights}", "train.run_name=ft"]) == 0
    out = capsys.readouterr().out
    assert f"started from {weights} (classifier re-initialised for the new classes)" in out
    assert "48 train / 12 val / 18 test images, 3 classes" in out
    printed = float(re.search(r"test top-1 \(best\.pt, trained weights, fp32\) +([\d.]+)%", out)[1])

    best = runs / "ft" / "best.pt"
    ckpt = load_checkpoint(best)
    assert ckpt["classes"] == CLASSES and ckpt["arch"]["num_classes"] == 3
    assert ckpt["model"]["fc.weight"].shape == (3, 2048)
    # The backbone is the file's, moved a little by 24 steps at lr <= 0.0025 (8 / 32 * 0.01;
    # seen: the stem by 12% of its norm, the blocks' silent branches by 0.002%); the run's own
    # init (seed 0) is as far from the file as two independent random tensors are (~1.4).
    file = torch.load(weights, weights_only=True)
    torch.manual_seed(0)
    own = create_model("resnext50_32x4d", num_classes=3, stem_width=64, widths=None).state_dict()
    for key in ("conv1.weight", "layer1.0.conv2.weight", "layer4.2.conv3.weight"):
        moved = (ckpt["model"][key] - file[key]).norm() / file[key].norm()
        assert moved < 0.25, (key, float(moved))
        assert (own[key] - file[key]).norm() / file[key].norm() > 1.0
    # Learning happened: three shapes of three colours, from chance (33%) to nearly all.
    assert printed >= 80.0, out

    report = tmp_path / "eval.json"
    assert main(["eval", str(best), "--no-progress", "--json", str(report)]) == 0
    evaluated = json.loads(report.read_text())["members"][0]
    assert evaluated["num_images"] == 18
    assert evaluated["top1"] == pytest.approx(printed, abs=0.005)  # printed with 2 decimals
    record = json.loads((runs / "ft" / "metrics.jsonl").read_text().splitlines()[-1])
    assert record["kind"] == "test" and evaluated["top1"] == pytest.approx(record["test_top1"])
    capsys.readouterr()

    assert main(["predict", str(best), str(data / "test"), "--topk", "1", "--json"]) == 0
    predictions = json.loads(capsys.readouterr().out)["predictions"]
    assert len(predictions) == 18
    right = sum(Path(p["path"]).parent.name == p["topk"][0]["class"] for p in predictions)
    assert right == round(evaluated["top1"] * 18 / 100)
