"""MNIST and Fashion-MNIST from their IDX files, gzipped or not.

``data.root`` is a folder holding ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
``t10k-images-idx3-ubyte`` and ``t10k-labels-idx1-ubyte`` (each optionally ``.gz``; the
``*.idx3-ubyte`` spelling of some mirrors also works), directly or in ``raw/`` or
``MNIST/raw/`` / ``FashionMNIST/raw/`` (torchvision's layout). Debian's package
``dataset-fashion-mnist`` installs the official gzipped files in
``/usr/share/datasets/fashion-mnist/``: that is where ``fashion_mnist`` looks when
``data.root`` is not set. IDX: a big-endian header
(magic ``0x00000803`` for uint8 3-d images, ``0x00000801`` for uint8 1-d labels, then
the sizes), then the raw bytes. Images are 28x28 grayscale, served as 3 equal channels
so every model takes 3-channel input.
"""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import torch

from ..errors import DataError
from .base import Splits, TensorImages
from .splitting import carve_val

MNIST_CLASSES = [str(i) for i in range(10)]
FASHION_MNIST_CLASSES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]
# Pixel mean/std of the 60,000 training images as commonly published (the PyTorch MNIST
# example's 0.1307/0.3081; Fashion-MNIST 0.2860/0.3530), repeated over the 3 channels.
MNIST_MEAN, MNIST_STD = (0.1307,) * 3, (0.3081,) * 3
FASHION_MNIST_MEAN, FASHION_MNIST_STD = (0.2860,) * 3, (0.3530,) * 3

IMAGES_MAGIC = 0x00000803  # unsigned byte, 3 dimensions
LABELS_MAGIC = 0x00000801  # unsigned byte, 1 dimension
_SUBFOLDERS = {"mnist": "MNIST", "fashion_mnist": "FashionMNIST"}
#: Where a system package installs the dataset (``apt-get install dataset-fashion-mnist``,
#: Debian and Ubuntu); used when data.root is not set.
SYSTEM_ROOTS = {"fashion_mnist": "/usr/share/datasets/fashion-mnist"}
_PACKAGES = {"fashion_mnist": "dataset-fashion-mnist"}


class GrayImages(TensorImages):
    """uint8 ``(N, 1, H, W)`` images served as 3 equal channels (stored once, not thrice)."""

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.images[index].expand(3, -1, -1).contiguous(), self.labels[index]


def _find(folder: Path, prefix: str, kind: str) -> Path | None:
    dims = "idx3" if kind == "images" else "idx1"
    for stem in (f"{prefix}-{kind}-{dims}-ubyte", f"{prefix}-{kind}.{dims}-ubyte"):
        for name in (stem, f"{stem}.gz"):
            if (folder / name).is_file():
                return folder / name
    return None


def read_idx(path: Path, magic: int) -> torch.Tensor:
    """One IDX file as a uint8 tensor, its header checked against ``magic`` and its size."""
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":  # gzip, whatever the file is called
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as e:
            raise DataError(f"{str(path)!r} is a damaged gzip file ({e})") from None
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{str(path)!r} is too short ({len(raw)} bytes) to be an IDX file")
    found = struct.unpack(">I", raw[:4])[0]
    if found != magic:
        raise DataError(
            f"{str(path)!r} has IDX magic number 0x{found:08x}, expected 0x{magic:08x} "
            f"({'uint8 images, 3-d' if ndim == 3 else 'uint8 labels, 1-d'}); is it the right file?"
        )
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    count = 1
    for s in shape:
        count *= s
    if len(raw) - header != count:
        raise DataError(
            f"{str(path)!r}: header says {shape} = {count} bytes of data, file holds "
            f"{len(raw) - header}; the file is truncated or not IDX"
        )
    data = torch.frombuffer(bytearray(raw[header:]), dtype=torch.uint8)
    return data.reshape(shape)


def _read_split(folder: Path, prefix: str) -> tuple[torch.Tensor, list[int]]:
    images_path, labels_path = _find(folder, prefix, "images"), _find(folder, prefix, "labels")
    if images_path is None or labels_path is None:
        raise DataError(f"{str(folder)!r} lacks the {prefix} images or labels IDX file")
    images = read_idx(images_path, IMAGES_MAGIC)
    labels = read_idx(labels_path, LABELS_MAGIC)
    if len(images) != len(labels):
        raise DataError(
            f"{str(images_path)!r} holds {len(images)} images but {str(labels_path)!r} "
            f"{len(labels)} labels"
        )
    if len(labels) and int(labels.max()) > 9:
        raise DataError(f"{str(labels_path)!r} has label {int(labels.max())}; expected 0..9")
    return images.unsqueeze(1), labels.tolist()


def mnist_splits(name: str, root: str | None, val_fraction: float, split_seed: int) -> Splits:
    """Train minus a stratified val share, val carved from train, the official t10k test."""
    files = (
        "train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte and "
        "t10k-labels-idx1-ubyte (each may end in .gz)"
    )
    if root is None and name in SYSTEM_ROOTS:
        if not Path(SYSTEM_ROOTS[name]).is_dir():
            raise DataError(
                f"data.root is not set and {SYSTEM_ROOTS[name]} (where `apt-get install "
                f"{_PACKAGES[name]}` puts {name}) does not exist; install that package, or "
                f"set data.root to the folder holding {files}"
            )
        root = SYSTEM_ROOTS[name]
    if root is None:
        raise DataError(f"data.root is not set; give the folder holding {files}")
    base = Path(root).expanduser()
    if not base.is_dir():
        raise DataError(f"data.root={root!r} is not a folder; expected one holding {files}")
    candidates = [base, base / "raw", base / _SUBFOLDERS[name] / "raw"]
    folder = next((c for c in candidates if _find(c, "train", "images")), None)
    if folder is None:
        found = sorted(p.name for p in base.iterdir())[:8]
        raise DataError(f"data.root={root!r} holds {found or 'nothing'}; expected {files}")
    train_x, train_y = _read_split(folder, "train")
    test_x, test_y = _read_split(folder, "t10k")
    if name == "mnist":
        classes, mean, std = MNIST_CLASSES, MNIST_MEAN, MNIST_STD
    else:
        classes, mean, std = FASHION_MNIST_CLASSES, FASHION_MNIST_MEAN, FASHION_MNIST_STD
    return carve_val(
        GrayImages(train_x, train_y),
        GrayImages(test_x, test_y),
        list(classes),
        mean,
        std,
        val_fraction,
        split_seed,
        info={"source": str(folder)},
    )
