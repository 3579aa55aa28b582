"""``resnext predict``: top-k per image, folders in batches, bad files skipped with exit 1."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import tiny_checkpoint
from resnext import Classifier, RuntimeOptions, create_model
from resnext.cli import main
from resnext.config import from_dict
from resnext.data import DIGITS_CLASSES, Preprocess, build_splits

LINE = re.compile(r"^  (.+)  \((\d+\.\d\d)%\)$")


@pytest.fixture(scope="module")
def digits_pngs(tmp_path_factory) -> tuple[Path, torch.Tensor]:
    """Six digits test images saved as grayscale PNGs, and the eval tensors of the same."""
    folder = tmp_path_factory.mktemp("pngs")
    test = build_splits(from_dict({"data": {"test_fraction": 0.05}}).data).test
    xs = []
    for i in range(6):
        img, label = test.base[i]
        Image.fromarray(img[0].numpy()).save(folder / f"{i}_label{label}.png")
        xs.append(test[i][0])
    return folder, torch.stack(xs)


def test_predict_json_matches_the_model_on_eval_tensors(tmp_path, capsys, digits_pngs) -> None:
    folder, x = digits_pngs
    ckpt = tiny_checkpoint(tmp_path / "c.pt", classes=list(DIGITS_CLASSES))
    rc = main(["predict", str(ckpt), str(folder), "--json", "--topk", "3", "--batch-size", "4"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert out["errors"] == [] and len(out["predictions"]) == 6
    clf = Classifier.from_checkpoint(ckpt, runtime=RuntimeOptions(device="cpu"))
    with torch.no_grad():
        want = clf.model(x).softmax(1)
    for i, pred in enumerate(out["predictions"]):
        assert Path(pred["path"]).name.startswith(f"{i}_")  # sorted folder order
        top = want[i].topk(3)
        assert [p["class"] for p in pred["topk"]] == [str(int(k)) for k in top.indices]
        assert all(p["name"] == p["class"] for p in pred["topk"])  # digits: names are ids
        got = torch.tensor([p["probability"] for p in pred["topk"]])
        torch.testing.assert_close(got, top.values, rtol=0, atol=1e-6)


def test_text_output_and_bad_files(tmp_path, capsys, digits_pngs) -> None:
    folder, _ = digits_pngs
    ckpt = tiny_checkpoint(tmp_path / "c.pt", classes=list(DIGITS_CLASSES))
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 truncated")
    good = sorted(folder.glob("*.png"))[:2]
    argv = ["predict", str(ckpt), str(good[0]), str(bad), str(tmp_path / "gone.png"), str(good[1])]
    assert main(argv) == 1
    cap = capsys.readouterr()
    lines = cap.out.splitlines()
    assert lines[0] == str(good[0]) and lines[6] == str(good[1])  # path, then 5 classes
    for line in lines[1:6] + lines[7:12]:
        m = LINE.match(line)
        assert m and m[1] in DIGITS_CLASSES
    assert "broken.jpg" in cap.err and "gone.png: does not exist" in cap.err
    assert "2 input(s) failed, 2 classified" in cap.err


def test_folder_skips_non_image_names_and_exits_0(tmp_path, capsys, digits_pngs) -> None:
    folder, _ = digits_pngs
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "a.png").write_bytes(sorted(folder.glob("*.png"))[0].read_bytes())
    ckpt = tiny_checkpoint(tmp_path.parent / f"{tmp_path.name}.pt")
    assert main(["predict", str(ckpt), str(tmp_path), "--topk", "1"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == str(tmp_path / "a.png") and len(out) == 2


def test_1000_classes_without_names_print_imagenet_names(tmp_path, capsys, digits_pngs) -> None:
    folder, _ = digits_pngs
    ckpt = tiny_checkpoint(tmp_path / "c.pt", num_classes=1000)
    png = sorted(folder.glob("*.png"))[0]
    assert main(["predict", str(ckpt), str(png), "--topk", "1000"]) == 0
    names = [LINE.match(line)[1] for line in capsys.readouterr().out.splitlines()[1:]]
    assert len(names) == 1000 and "tench, Tinca tinca" in names
    assert "toilet tissue, toilet paper, bathroom tissue" in names


def test_predict_user_errors(tmp_path, capsys) -> None:
    ckpt = tiny_checkpoint(tmp_path / "c.pt")
    assert main(["predict", str(ckpt)]) == 2
    assert "at least one image" in capsys.readouterr().err
    assert main(["predict", str(ckpt), str(tmp_path), "--topk", "0"]) == 2
    assert "--topk must be at least 1" in capsys.readouterr().err
    assert main(["predict", str(tmp_path / "x.png"), str(ckpt)]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["predict", "--model", "resnext29_2x4d", str(tmp_path)]) == 2
    assert "--model and --weights go together" in capsys.readouterr().err


def test_plain_weights_with_a_model_name(tmp_path, capsys, digits_pngs) -> None:
    folder, _ = digits_pngs
    model = create_model("resnext29_2x4d", num_classes=10)
    torch.save(model.state_dict(), tmp_path / "w.pth")
    argv = ["predict", "--model", "resnext29_2x4d", "--weights", str(tmp_path / "w.pth")]
    assert main([*argv, str(folder), "--topk", "1", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)["predictions"]
    # The default CIFAR-family preprocessing: 32x32, ImageNet mean/std.
    clf = Classifier(
        model, [str(i) for i in range(10)], Preprocess(32), runtime=RuntimeOptions(device="cpu")
    )
    want = clf.predict(sorted(folder.glob("*.png")), topk=1)
    assert [p["topk"][0]["class"] for p in out] == [w[0][0] for w in want]


def test_predict_imports_neither_torchvision_nor_dynamo(tmp_path, digits_pngs) -> None:
    """``resnext predict`` in a fresh interpreter loads only what it runs: the eval transform
    is torch alone and models built to be loaded skip the random draws that would import
    torch._dynamo (together ~1.4 s of start-up, measured by benchmarks/predict_end_to_end.py)."""
    import subprocess
    import sys

    folder, _ = digits_pngs
    ckpt = tiny_checkpoint(tmp_path / "c.pt", classes=list(DIGITS_CLASSES))
    code = (
        "import sys\nfrom resnext.cli import main\n"
        f"rc = main(['predict', {str(ckpt)!r}, {str(folder)!r}, '--json', '--backend', 'eager'])\n"
        "loaded = sorted(m for m in sys.modules if m.split('.')[0] == 'torchvision' "
        "or m.startswith('torch._dynamo'))\n"
        "print('LOADED', rc, loaded[:5], file=sys.stderr)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=300
    )
    assert "LOADED 0 []" in done.stderr, done.stderr[-2000:]


def test_explain_writes_each_images_overlay_and_map_named_in_the_json(
    tmp_path, capsys, digits_pngs
) -> None:
    folder, _ = digits_pngs
    digit = sorted(folder.glob("*.png"))[0]
    (tmp_path / "b").mkdir()
    twin = tmp_path / "b" / digit.name  # the same file name in another folder
    wide = tmp_path / "wide.png"  # non-square: the eval crop cuts its sides away
    Image.fromarray(torch.randint(0, 256, (40, 64), dtype=torch.uint8).numpy()).save(wide)
    twin.write_bytes(digit.read_bytes())
    ckpt = tiny_checkpoint(tmp_path / "c.pt", classes=list(DIGITS_CLASSES))
    maps = tmp_path / "maps"
    argv = [str(ckpt), str(digit), str(twin), str(wide), "--json", "--explain", str(maps)]
    assert main(["predict", *argv, "--backend", "eager"]) == 0
    out = json.loads(capsys.readouterr().out)["predictions"]
    files = [(p["explain"]["overlay"], p["explain"]["map"]) for p in out]
    stem = digit.stem
    assert files == [
        (str(maps / f"{stem}.cam.png"), str(maps / f"{stem}.cam.npy")),
        (str(maps / f"{stem}-2.cam.png"), str(maps / f"{stem}-2.cam.npy")),
        (str(maps / "wide.cam.png"), str(maps / "wide.cam.npy")),
    ]
    eager = Classifier.from_checkpoint(ckpt, runtime=RuntimeOptions(backend="eager"))
    for p, path, (png, npy) in zip(out, [digit, twin, wide], files, strict=True):
        assert p["explain"]["class"] == p["topk"][0]["class"]
        assert Image.open(png).format == "PNG"
        cam = np.load(npy, allow_pickle=False)
        (e,) = eager.explain(path, topk=10)
        assert cam.dtype == np.float32 and cam.shape == Image.open(path).size[::-1]
        want = e.maps[e.classes.index(p["explain"]["class"])]
        np.testing.assert_allclose(cam, want, rtol=0, atol=1e-5)  # NaN where want is NaN
    assert np.isnan(np.load(files[2][1])).any(axis=0).sum() > 0  # the cut-away sides
    assert not np.isnan(np.load(files[0][1])).any()
