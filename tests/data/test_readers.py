"""Dataset readers on files written here in the exact official layouts.

CIFAR: pickled dicts with bytes keys (b"data", b"labels" / b"fine_labels",
b"coarse_labels"; meta b"label_names" / b"fine_label_names"), protocol 2 as the
originals (Python 2 cPickle), in cifar-10-batches-py/ or as the .tar.gz. MNIST: IDX
files with big-endian magic 0x803 / 0x801, gzipped or not. Image folders and lists.
The writers are in helpers.py, shared with the other data tests.
"""

from __future__ import annotations

import pickle
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import (
    CIFAR10_NAMES,
    dump_pickle,
    tar_gz,
    write_cifar10,
    write_cifar100,
    write_image_tree,
    write_jpeg,
    write_mnist,
)
from resnext.config import DataConfig
from resnext.data import DataError, build_raw_splits, build_splits
from resnext.data.images import ImageFiles

# --- CIFAR -------------------------------------------------------------------------


def test_cifar10_folder_splits_and_class_names(tmp_path: Path) -> None:
    folder = write_cifar10(tmp_path)
    cfg = DataConfig(name="cifar10", root=str(tmp_path), val_fraction=0.2, split_seed=3)
    s = build_raw_splits(cfg)
    assert s.classes == CIFAR10_NAMES
    assert s.mean == (0.4914, 0.4822, 0.4465)
    assert len(s.train) + len(s.val) == 100 and len(s.val) == 20 and len(s.test) == 20
    # stratified: 2 of each class's 10 training images went to val
    assert sorted(s.val.labels) == sorted(list(range(10)) * 2)
    # the first training image is row 0 of data_batch_1, R/G/B planes of 32x32
    with open(folder / "data_batch_1", "rb") as f:
        raw = pickle.load(f, encoding="bytes")
    full_train = s.train.base
    img, label = full_train[0]
    assert img.dtype == torch.uint8 and img.shape == (3, 32, 32)
    assert torch.equal(img, torch.from_numpy(raw[b"data"][0].reshape(3, 32, 32)))
    assert label == raw[b"labels"][0]
    # the test split is the official test_batch, untouched by the split
    with open(folder / "test_batch", "rb") as f:
        test_raw = pickle.load(f, encoding="bytes")
    assert s.test.labels == test_raw[b"labels"]
    # val and train never overlap; the same seed gives the same split
    assert not set(s.train.indices) & set(s.val.indices)
    assert build_raw_splits(cfg).val.indices == s.val.indices
    other = build_raw_splits(DataConfig(name="cifar10", root=str(tmp_path), val_fraction=0.2))
    assert other.val.indices != s.val.indices


def test_cifar10_reads_tar_gz_as_distributed(tmp_path: Path) -> None:
    folder = write_cifar10(tmp_path / "src")
    archive = tar_gz(folder, tmp_path / "cifar-10-python.tar.gz")
    from_folder = build_raw_splits(DataConfig(name="cifar10", root=str(folder)))
    for root in (archive, tmp_path):  # the file itself, or a folder holding it
        s = build_raw_splits(DataConfig(name="cifar10", root=str(root)))
        assert s.classes == CIFAR10_NAMES
        assert torch.equal(s.test.images, from_folder.test.images)
        assert s.train.base.labels == from_folder.train.base.labels


def test_cifar100_fine_and_coarse(tmp_path: Path) -> None:
    folder = write_cifar100(tmp_path)
    tar_gz(folder, tmp_path / "cifar-100-python.tar.gz")
    fine = build_raw_splits(DataConfig(name="cifar100", root=str(tmp_path), val_fraction=0.0))
    assert len(fine.classes) == 100 and fine.classes[7] == "fine07"
    assert fine.val is None and len(fine.train) == 200 and len(fine.test) == 50
    assert fine.mean == (0.5071, 0.4865, 0.4409)
    coarse = build_raw_splits(
        DataConfig(
            name="cifar100",
            root=str(tmp_path / "cifar-100-python.tar.gz"),
            cifar_labels="coarse",
            val_fraction=0.0,
        )
    )
    assert len(coarse.classes) == 20 and coarse.classes[3] == "coarse03"
    assert coarse.train.labels == [y // 5 for y in fine.train.labels]


def test_cifar_errors_say_what_was_expected(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=re.escape("cifar-10-python.tar.gz")):
        build_raw_splits(DataConfig(name="cifar10", root=str(tmp_path / "missing")))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="cifar-10-batches-py"):
        build_raw_splits(DataConfig(name="cifar10", root=str(tmp_path / "empty")))
    # CIFAR-10 files given as CIFAR-100: says which keys it found
    folder = write_cifar10(tmp_path / "c10")
    (folder / "train").write_bytes((folder / "data_batch_1").read_bytes())
    (folder / "test").write_bytes((folder / "test_batch").read_bytes())
    (folder / "meta").write_bytes((folder / "batches.meta").read_bytes())
    with pytest.raises(DataError, match="fine_label_names"):
        build_raw_splits(DataConfig(name="cifar100", root=str(folder)))
    # a truncated archive
    archive = tar_gz(folder, tmp_path / "cifar-10-python.tar.gz")
    cut = tmp_path / "cut" / "cifar-10-python.tar.gz"
    cut.parent.mkdir()
    cut.write_bytes(archive.read_bytes()[:2000])
    with pytest.raises(DataError, match="not a readable tar archive"):
        build_raw_splits(DataConfig(name="cifar10", root=str(cut)))


def test_cifar_pickle_cannot_run_code(tmp_path: Path) -> None:
    folder = write_cifar10(tmp_path)

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    dump_pickle({b"data": Evil(), b"labels": []}, folder / "data_batch_2")
    with pytest.raises(DataError, match=r"refusing to load \S*\.print from a CIFAR file"):
        build_raw_splits(DataConfig(name="cifar10", root=str(folder)))


# --- MNIST / Fashion-MNIST -----------------------------------------------------------


@pytest.mark.parametrize("gz", [True, False])
def test_mnist_idx_gzipped_or_not(tmp_path: Path, gz: bool) -> None:
    write_mnist(tmp_path, gz=gz)
    s = build_raw_splits(DataConfig(name="mnist", root=str(tmp_path), val_fraction=0.1))
    assert s.classes == [str(i) for i in range(10)]
    assert s.mean == (0.1307,) * 3
    assert len(s.train) == 90 and len(s.val) == 10 and len(s.test) == 20
    img, label = s.test[3]
    assert img.shape == (3, 28, 28) and img.dtype == torch.uint8 and label == 3
    assert torch.equal(img[0], img[1]) and torch.equal(img[1], img[2])  # gray -> 3 channels
    # pixel values match what was written, row-major 28x28
    rng = np.random.default_rng(0)
    train_written = rng.integers(0, 256, (100, 28, 28))
    test_written = rng.integers(0, 256, (20, 28, 28))
    assert torch.equal(img[0], torch.from_numpy(test_written[3].astype(np.uint8)))
    assert np.array_equal(s.train.base.images[:, 0].numpy(), train_written.astype(np.uint8))


def test_fashion_mnist_in_torchvision_layout(tmp_path: Path) -> None:
    write_mnist(tmp_path / "FashionMNIST" / "raw", gz=False)
    s = build_raw_splits(DataConfig(name="fashion_mnist", root=str(tmp_path)))
    assert s.classes[0] == "T-shirt/top" and s.classes[9] == "Ankle boot"
    assert s.mean == (0.2860,) * 3


def test_mnist_wrong_magic_and_truncation(tmp_path: Path) -> None:
    write_mnist(tmp_path, gz=False)
    labels = tmp_path / "t10k-labels-idx1-ubyte"
    images = tmp_path / "t10k-images-idx3-ubyte"
    good = images.read_bytes()
    images.write_bytes(labels.read_bytes())  # a labels file where images belong
    with pytest.raises(DataError, match="magic number 0x00000801, expected 0x00000803"):
        build_raw_splits(DataConfig(name="mnist", root=str(tmp_path)))
    images.write_bytes(good[:-10])
    with pytest.raises(DataError, match="truncated"):
        build_raw_splits(DataConfig(name="mnist", root=str(tmp_path)))
    (tmp_path / "other").mkdir()
    with pytest.raises(DataError, match="train-images-idx3-ubyte"):
        build_raw_splits(DataConfig(name="mnist", root=str(tmp_path / "other")))


# --- image folders and lists -----------------------------------------------------------


def test_imagefolder_train_val_test_trees(tmp_path: Path) -> None:
    write_image_tree(tmp_path / "train", ["cat", "dog", "emu"], 4)
    write_image_tree(tmp_path / "val", ["cat", "emu"], 2, seed=50)
    write_image_tree(tmp_path / "test", ["dog"], 1, seed=90)
    (tmp_path / "train" / "cat" / "notes.txt").write_text("not an image, ignored")
    cfg = DataConfig(name="imagefolder", root=str(tmp_path), test_dir="test")
    s = build_raw_splits(cfg)
    assert s.classes == ["cat", "dog", "emu"]
    assert s.mean == (0.485, 0.456, 0.406) and s.std == (0.229, 0.224, 0.225)
    assert len(s.train) == 12 and len(s.val) == 4 and len(s.test) == 1
    assert s.val.labels == [0, 0, 2, 2] and s.test.labels == [1]
    img, label = s.train[5]
    assert isinstance(img, Image.Image) and img.mode == "RGB" and img.size == (40, 30)
    assert label == 1 and s.train.paths[5].endswith("dog/dog_1.jpg")


def test_imagefolder_flat_val_with_label_file(tmp_path: Path) -> None:
    write_image_tree(tmp_path / "train", ["n01", "n02"], 2)
    for k in range(4):
        write_jpeg(tmp_path / "val" / f"ILSVRC2012_val_{k:08d}.JPEG", seed=k)
    # int indices (Caffe's val.txt style) and class names may both appear
    lines = ["ILSVRC2012_val_00000000.JPEG 1", "ILSVRC2012_val_00000001.JPEG n01", ""]
    lines += ["ILSVRC2012_val_00000002.JPEG 0", "ILSVRC2012_val_00000003.JPEG n02"]
    (tmp_path / "val.txt").write_text("\n".join(lines))
    cfg = DataConfig(name="imagefolder", root=str(tmp_path), val_labels="val.txt")
    s = build_raw_splits(cfg)
    assert s.val.labels == [1, 0, 0, 1]
    # without the label file: a clear error that names the fix
    with pytest.raises(DataError, match=re.escape("data.val_labels")):
        build_raw_splits(DataConfig(name="imagefolder", root=str(tmp_path)))
    (tmp_path / "val.txt").write_text("ILSVRC2012_val_00000000.JPEG 7\n")
    with pytest.raises(DataError, match=re.escape("outside 0..1")):
        build_raw_splits(cfg)
    (tmp_path / "val.txt").write_text("missing.JPEG 0\n")
    with pytest.raises(DataError, match=re.escape("missing.JPEG")):
        build_raw_splits(cfg)


def test_imagefolder_carved_val_and_layout_errors(tmp_path: Path) -> None:
    write_image_tree(tmp_path / "train", ["a", "b"], 5)
    cfg = DataConfig(name="imagefolder", root=str(tmp_path), val_dir=None, val_fraction=0.2)
    s = build_raw_splits(cfg)
    assert len(s.train) == 8 and s.val.labels == [0, 1] and s.test is None
    assert not set(s.train.paths) & set(s.val.paths)
    with pytest.raises(DataError, match="val_dir=null"):
        build_raw_splits(DataConfig(name="imagefolder", root=str(tmp_path)))
    with pytest.raises(DataError, match="train folder"):
        build_raw_splits(DataConfig(name="imagefolder", root=str(tmp_path), train_dir="nope"))
    write_image_tree(tmp_path / "val", ["zebra"], 1)
    with pytest.raises(DataError, match="'zebra', which the train folder lacks"):
        build_raw_splits(DataConfig(name="imagefolder", root=str(tmp_path)))


def test_imagelist_relative_to_list_folder_or_root(tmp_path: Path) -> None:
    for k in range(6):
        write_jpeg(tmp_path / "imgs" / f"{k}.jpg", seed=k)
    (tmp_path / "train.csv").write_text(
        "path,label\n" + "".join(f"imgs/{k}.jpg,{'cat' if k % 2 else 'ant'}\n" for k in range(4))
    )
    (tmp_path / "lists").mkdir()  # paths here are relative to root, not to lists/
    (tmp_path / "lists" / "val.csv").write_text("imgs/4.jpg,cat\nimgs/5.jpg,ant\n")
    cfg = DataConfig(
        name="imagelist", root=str(tmp_path), train_list="train.csv", val_list="lists/val.csv"
    )
    s = build_raw_splits(cfg)
    assert s.classes == ["ant", "cat"]
    assert s.train.labels == [0, 1, 0, 1] and s.val.labels == [1, 0]
    assert s.val.paths[0] == str(tmp_path / "imgs" / "4.jpg")
    (tmp_path / "ints.csv").write_text("imgs/0.jpg,2\nimgs/1.jpg,0\n")
    ints = build_raw_splits(
        DataConfig(name="imagelist", root=str(tmp_path), train_list="ints.csv", val_fraction=0)
    )
    assert ints.classes == ["0", "1", "2"] and ints.train.labels == [2, 0]
    (tmp_path / "mixed.csv").write_text("imgs/0.jpg,2\nimgs/1.jpg,cat\n")
    with pytest.raises(DataError, match="all int indices or all class names"):
        build_raw_splits(DataConfig(name="imagelist", root=str(tmp_path), train_list="mixed.csv"))
    (tmp_path / "lost.csv").write_text("nowhere/0.jpg,1\n")
    with pytest.raises(DataError, match=re.escape("first image 'nowhere/0.jpg' not found")):
        build_raw_splits(DataConfig(name="imagelist", root=str(tmp_path), train_list="lost.csv"))


def test_build_splits_attaches_transforms(tmp_path: Path) -> None:
    write_image_tree(tmp_path / "train", ["a", "b"], 2)
    write_image_tree(tmp_path / "val", ["a", "b"], 1)
    cfg = DataConfig(
        name="imagefolder", root=str(tmp_path), augment="imagenet", image_size=24, eval_resize=28
    )
    s = build_splits(cfg)
    x, y = s.train[(1, 1234)]
    assert x.shape == (3, 24, 24) and x.dtype == torch.float32 and y == 0
    assert torch.equal(x, s.train[(1, 1234)][0])  # same (index, seed), same crop
    assert s.val[0][0].shape == (3, 24, 24)
    assert isinstance(s.train.base, ImageFiles)


def test_unknown_reader_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="available: cifar10, cifar100, digits"):
        build_raw_splits(DataConfig(name="svhn"))


def test_cifar_pickle_helper_accepts_numpy2_protocol5(tmp_path: Path) -> None:
    folder = write_cifar10(tmp_path)
    batch = pickle.loads((folder / "data_batch_1").read_bytes())
    (folder / "data_batch_1").write_bytes(pickle.dumps(batch, protocol=5))
    s = build_raw_splits(DataConfig(name="cifar10", root=str(folder), val_fraction=0))
    assert torch.equal(s.train.images[0], torch.from_numpy(batch[b"data"][0].reshape(3, 32, 32)))
