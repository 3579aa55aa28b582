"""Classes that are WordNet ids (ImageNet and Tiny ImageNet folders) are shown by their names
in predictions and eval reports; checkpoints, `Classifier.topk` and JSON "class" keep the ids."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from helpers import VAL, tiny_checkpoint, tiny_run, write_tiny_imagenet
from resnext import Classifier, RuntimeOptions
from resnext.checkpoint import load_checkpoint
from resnext.cli import main
from resnext.inference import imagenet_classes
from resnext.inference.classes import WNID, imagenet_wnids, readable_names, with_id

pytestmark = pytest.mark.usefixtures("restore_torch_globals")


def test_the_shipped_wnids_pair_with_the_imagenet_names() -> None:
    wnids = imagenet_wnids()
    assert len(wnids) == len(set(wnids)) == 1000
    assert wnids == sorted(wnids) and all(WNID.fullmatch(w) for w in wnids)
    names = dict(zip(wnids, imagenet_classes(), strict=True))
    # Fixed points of the ILSVRC-2012 label order (index: wnid, name).
    assert wnids[0] == "n01440764" and names["n01440764"] == "tench, Tinca tinca"
    assert wnids[1] == "n01443537" and names["n01443537"] == "goldfish, Carassius auratus"
    assert wnids.index("n02012849") == 134 and wnids.index("n03126707") == 517  # both "crane"
    assert names["n02124075"] == "Egyptian cat"
    assert wnids[999] == "n15075141"
    assert names["n15075141"] == "toilet tissue, toilet paper, bathroom tissue"


def test_readable_names_name_wnids_and_leave_the_rest() -> None:
    assert readable_names(["n01443537", "n02124075"]) == [
        "goldfish, Carassius auratus",
        "Egyptian cat",
    ]
    # not a WordNet id, or one outside ImageNet-1k: shown as it is
    assert readable_names(["cat", "n00001740", "7"]) == ["cat", "n00001740", "7"]
    # the bird and the machine share the name "crane": each keeps its id
    assert readable_names(["n02012849", "n03126707", "n01443537"]) == [
        "crane (n02012849)",
        "crane (n03126707)",
        "goldfish, Carassius auratus",
    ]
    assert readable_names(imagenet_wnids())[1] == "goldfish, Carassius auratus"


def test_classifier_predicts_the_ids_and_names_them(tmp_path: Path) -> None:
    wnids = ["n01443537", "n02124075", "n03126707"]
    ckpt = tiny_checkpoint(tmp_path / "c.pt", num_classes=3, classes=wnids)
    clf = Classifier.from_checkpoint(ckpt, runtime=RuntimeOptions(device="cpu", backend="eager"))
    assert clf.classes == wnids
    assert clf.names == ["goldfish, Carassius auratus", "Egyptian cat", "crane"]
    top = clf.predict(torch.zeros(3, 32, 32, dtype=torch.uint8), topk=3)
    assert sorted(c for c, _ in top[0]) == wnids  # the model's classes, as before names
    assert [clf.name_of(w) for w in wnids] == clf.names
    assert with_id("goldfish, Carassius auratus", "n01443537") == (
        "goldfish, Carassius auratus (n01443537)"
    )
    assert with_id("crane (n03126707)", "n03126707") == "crane (n03126707)"
    assert with_id("7", "7") == "7"


def test_tiny_imagenet_run_predicts_and_reports_names(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """Train on Tiny ImageNet's layout: the checkpoint holds the wnids, `resnext predict` and
    `resnext eval` show the names, and eval of the missing test split says what to do."""
    root = write_tiny_imagenet(tmp_path / "tiny-imagenet-200")
    argv = [
        "train",
        "data.name=tiny_imagenet",
        f"data.root={root}",
        "data.image_size=32",  # the test's 64x64 images, resized: fast
        *tiny_run("model.stem_width=8"),
        "train.batch_size=8",
        "train.epochs=1",
        "train.tensorboard=false",
        f"train.output_dir={tmp_path / 'runs'}",
        "train.run_name=tiny",
    ]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "no test split" in out and "12 train / 5 val images, 3 classes" in out
    best = tmp_path / "runs" / "tiny" / "best.pt"
    assert load_checkpoint(best)["classes"] == ["n01443537", "n02124075", "n03126707"]

    image = root / "val" / "images" / VAL[0][0]
    argv = ["predict", str(best), str(image), "--topk", "3", "--backend", "eager"]
    assert main([*argv, "--json"]) == 0
    topk = json.loads(capsys.readouterr().out)["predictions"][0]["topk"]
    names = {"n01443537": "goldfish, Carassius auratus", "n02124075": "Egyptian cat"}
    names["n03126707"] = "crane"
    assert {c["class"]: c["name"] for c in topk} == names  # the id, and what people read
    assert main(argv) == 0
    lines = capsys.readouterr().out.splitlines()[1:]
    assert sorted(re.sub(r"  \([\d.]+%\)$", "", x.strip()) for x in lines) == [
        "Egyptian cat (n02124075)",
        "crane (n03126707)",
        "goldfish, Carassius auratus (n01443537)",
    ]

    report = tmp_path / "eval.json"
    argv = ["eval", str(best), "--split", "val", "--backend", "eager", "--no-progress"]
    assert main([*argv, "--json", str(report)]) == 0
    table = capsys.readouterr().out
    assert re.search(r"^goldfish, Carassius auratus +2 ", table, re.M)  # the per-class table
    info = json.loads(report.read_text())
    assert info["classes"] == ["n01443537", "n02124075", "n03126707"]
    assert info["class_names"] == ["goldfish, Carassius auratus", "Egyptian cat", "crane"]

    assert main(["eval", str(best), "--backend", "eager", "--no-progress"]) == 2
    assert "has no test split; evaluate the val split" in capsys.readouterr().err
