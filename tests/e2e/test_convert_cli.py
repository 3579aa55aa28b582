"""resnext convert end to end: each source format -> a model file that eval, predict and the
Classifier load by path, with the source's own evaluation preprocessing; bad inputs refused
in one line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torchvision

import resnext
import t7write as tw
from resnext import RuntimeOptions
from resnext.checkpoint import load_checkpoint, model_from_checkpoint
from resnext.cli import main
from resnext.convert import detect_format
from resnext.data import Preprocess

SMALL_T7 = {"blocks": (2, 2, 2, 2), "cardinality": 2, "width": 4, "widths": (32, 64, 128, 256),
            "stem": 16, "num_classes": 10, "pool": 2}  # fmt: skip


def _convert(capsys, *argv: str) -> str:
    assert main(["convert", *argv]) == 0
    return capsys.readouterr().out


def test_a_torch7_release_file_becomes_a_model_file_with_the_authors_preprocessing(
    tmp_path: Path, capsys
) -> None:
    net = tw.resnext(tw.Modules(), np.random.default_rng(0), **SMALL_T7)
    src = tw.save(tmp_path / "resnext_26_2x4d.t7", net)
    out = _convert(capsys, str(src), "-o", str(tmp_path / "m.safetensors"))
    assert "t7 -> resnext26_2x4d" in out and "resize 256 -> crop 224, bicubic" in out
    assert "(reloaded: the same logits)" in out
    meta = json.loads((tmp_path / "m.json").read_text())
    assert Preprocess.from_dict(meta["preprocess"]).crop_offset == "ceil"
    assert meta["source"]["format"] == "t7" and meta["source"]["file"] == src.name
    clf = resnext.Classifier.from_checkpoint(
        tmp_path / "m.safetensors", runtime=RuntimeOptions(device="cpu")
    )
    assert clf.classes == [str(i) for i in range(10)] and clf.preprocess.interpolation == "bicubic"


def test_torchvision_files_carry_their_own_v1_or_v2_preprocessing(tmp_path: Path, capsys) -> None:
    state = torchvision.models.resnext50_32x4d(weights=None).state_dict()
    for name, resize in (
        ("resnext50_32x4d-7cdf4587.pth", 256),
        ("resnext50_32x4d-1a0047aa.pth", 232),
    ):
        torch.save(state, tmp_path / name)
        dst = tmp_path / name.replace(".pth", ".safetensors")
        out = _convert(capsys, str(tmp_path / name), "-o", str(dst))
        assert "state_dict -> resnext50_32x4d" in out and f"resize {resize} -> crop 224" in out
        ckpt = load_checkpoint(dst)
        assert ckpt["preprocess"]["eval_resize"] == resize
        assert ckpt["classes"][0] == "tench, Tinca tinca"  # 1000 outputs: ImageNet-1k names
        ours = model_from_checkpoint(ckpt)
        assert torch.equal(
            ours.state_dict()["layer3.5.conv2.weight"], state["layer3.5.conv2.weight"]
        )


def test_detection_and_options(tmp_path: Path, capsys) -> None:
    model = resnext.create_model("resnext29_2x4d", num_classes=3, widths=(16, 32, 64))
    torch.save({"epoch": 3, "state_dict": model.state_dict()}, tmp_path / "timm-style.pth.tar")
    assert detect_format(tmp_path / "timm-style.pth.tar") == "state_dict"  # no ema_state_dict
    classes = tmp_path / "classes.txt"
    classes.write_text("cat\ndog\nbird\n")
    out = _convert(capsys, str(tmp_path / "timm-style.pth.tar"), "-o",
                   str(tmp_path / "c.safetensors"), "--classes", str(classes))  # fmt: skip
    assert "classes: 3" in out
    assert load_checkpoint(tmp_path / "c.safetensors")["classes"] == ["cat", "dog", "bird"]
    net = tw.resnext(tw.Modules(), np.random.default_rng(0), **SMALL_T7)
    src = tw.save(tmp_path / "n.t7", net)
    assert main(["convert", str(src), "-o", str(tmp_path / "n.safetensors"),
                 "--preprocess", "tv-v2"]) == 2  # fmt: skip
    assert "the t7 importer takes no option preprocess" in capsys.readouterr().err
    assert main(["convert", str(src), "-o", str(tmp_path / "n.pt")]) == 2
    assert "written as NAME.safetensors" in capsys.readouterr().err


def test_a_file_that_is_no_resnext_says_what_it_is(tmp_path: Path, capsys) -> None:
    torch.save(torchvision.models.vgg11().state_dict(), tmp_path / "vgg.pth")
    assert main(["convert", str(tmp_path / "vgg.pth"), "-o", str(tmp_path / "v.safetensors")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "VGG" in err and "not a ResNeXt" in err
    assert not (tmp_path / "v.safetensors").exists()
