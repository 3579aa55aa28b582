"""Tiny ImageNet-200 (data.name=tiny_imagenet) on files written in the official zip's layout:
wnids.txt, words.txt, train/<wnid>/images/*.JPEG with <wnid>_boxes.txt, val/images with
val/val_annotations.txt, and test/images without labels."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from PIL import Image

from helpers import TRAIN_PER_CLASS, VAL, WNIDS, write_tiny_imagenet
from resnext.config import DataConfig
from resnext.data import DataError, build_raw_splits


def test_reads_the_official_layout(tmp_path: Path) -> None:
    root = write_tiny_imagenet(tmp_path / "tiny-imagenet-200")
    s = build_raw_splits(DataConfig(name="tiny_imagenet", root=str(root)))
    # Label order: the wnids sorted, as torchvision's ImageFolder on train/ gives them.
    assert s.classes == sorted(WNIDS) == ["n01443537", "n02124075", "n03126707"]
    assert s.mean == (0.485, 0.456, 0.406) and s.std == (0.229, 0.224, 0.225)
    assert len(s.train) == 3 * TRAIN_PER_CLASS
    assert s.train.labels == [0] * 4 + [1] * 4 + [2] * 4
    assert all("/images/" in p and p.endswith(".JPEG") for p in s.train.paths)  # no boxes.txt
    # val labels come from val_annotations.txt, not from any folder
    by_file = {Path(p).name: y for p, y in zip(s.val.paths, s.val.labels, strict=True)}
    assert by_file == {name: s.classes.index(wnid) for name, wnid in VAL}
    assert s.test is None  # test/images has no labels: no test split
    assert any("no test split" in note for note in s.info["notes"])
    img, label = s.train[5]
    assert isinstance(img, Image.Image) and img.size == (64, 64) and img.mode == "RGB"
    assert label == 1
    # data.root may also be the folder the zip was extracted into
    again = build_raw_splits(DataConfig(name="tiny_imagenet", root=str(tmp_path)))
    assert again.train.paths == s.train.paths and again.val.paths == s.val.paths


def test_val_reorganised_into_class_folders_is_read_too(tmp_path: Path) -> None:
    root = write_tiny_imagenet(tmp_path / "t")
    for name, wnid in VAL:  # what the common "reorganise val" scripts do
        (root / "val" / wnid / "images").mkdir(parents=True, exist_ok=True)
        (root / "val" / "images" / name).rename(root / "val" / wnid / "images" / name)
    (root / "val" / "images").rmdir()
    (root / "val" / "val_annotations.txt").unlink()
    s = build_raw_splits(DataConfig(name="tiny_imagenet", root=str(root)))
    by_file = {Path(p).name: y for p, y in zip(s.val.paths, s.val.labels, strict=True)}
    assert by_file == {name: s.classes.index(wnid) for name, wnid in VAL}


def _fails(root: Path, match: str) -> None:
    with pytest.raises(DataError, match=match):
        build_raw_splits(DataConfig(name="tiny_imagenet", root=str(root)))


def test_each_layout_mistake_is_named(tmp_path: Path) -> None:
    root = write_tiny_imagenet(tmp_path / "t")
    notes = root / "val" / "val_annotations.txt"
    good = notes.read_text()

    notes.write_text(good.replace("n02124075", "n09999999", 1))  # line 1
    _fails(
        root,
        re.escape("val_annotations.txt:1: val_0.JPEG is labelled 'n09999999', which wnids.txt"),
    )
    notes.write_text(good + "val_9.JPEG\tn01443537\t0\t0\t1\t1\n")
    _fails(root, r"1 image\(s\) that .* annotates are not in .*val_9.JPEG")
    notes.write_text(good.replace("val_4.JPEG\tn01443537\t4\t5\t44\t54\n", ""))
    _fails(root, r"1 image\(s\) in .* have no line in .*val_4.JPEG")
    notes.write_text(good + "broken line\n")
    _fails(root, "expected 'file<TAB>wnid")
    notes.write_bytes(good.encode() + b"val_9.JPEG\tn01443537\t\xff\xfe\n")  # not UTF-8
    _fails(root, r"val_annotations.txt' is not UTF-8 text")
    notes.write_text(good)

    (root / "wnids.txt").write_text("n01443537\nn02124075\nn03126707\nn04067472\n")
    _fails(root, r"wnids.txt lists 'n04067472' but .* holds no images")
    (root / "wnids.txt").write_text("n01443537\nn02124075\n")
    _fails(root, r"class folder\(s\) \['n03126707'\] that wnids.txt does not list")
    (root / "wnids.txt").write_text("n01443537\nn01443537\nn02124075\nn03126707\n")
    _fails(root, r"lists \['n01443537'\] more than once")
    (root / "wnids.txt").write_bytes("n01443537\nn02124075\nn03126707 \u00e9\n".encode("latin-1"))
    _fails(root, r"wnids.txt' is not UTF-8 text")

    (root / "wnids.txt").unlink()
    _fails(root, "has no wnids.txt .* give the extracted tiny-imagenet-200 folder")
    with pytest.raises(DataError, match=re.escape("data.root is not set")):
        build_raw_splits(DataConfig(name="tiny_imagenet"))
