"""CIFAR-10 and CIFAR-100 in the official "python version" format, read from local files.

``data.root`` may be the ``.tar.gz`` as distributed (``cifar-10-python.tar.gz``,
``cifar-100-python.tar.gz``), the extracted folder (``cifar-10-batches-py``,
``cifar-100-python``), or a folder holding either. The archive is read in memory, never
extracted. Batches are pickles of dicts (``data``: uint8 ``(N, 3072)`` rows of R, G, B
planes of 32x32; ``labels`` for CIFAR-10, ``fine_labels``/``coarse_labels`` for
CIFAR-100); the class names come from ``batches.meta``/``meta``. The pickles are read
with an unpickler that only builds numpy arrays and plain values, so a crafted file
cannot run code.
"""

from __future__ import annotations

import io
import pickle
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import DataError
from .base import Splits, TensorImages
from .splitting import carve_val

# Per-channel mean/std of the 50,000 training images, in [0, 1] units, as commonly
# published (e.g. kuangliu/pytorch-cifar, timm); the std is that of the pixels, not the
# often-copied (0.2023, 0.1994, 0.2010).
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)


@dataclass(frozen=True)
class _Layout:
    folder: str  # name of the extracted folder
    archive: str  # name of the distributed archive
    train: tuple[str, ...]  # batch files of the train split
    test: tuple[str, ...]  # batch files of the test split
    meta: str  # file holding the class names
    url: str  # where users get it (printed in errors; nothing is downloaded)


LAYOUTS = {
    "cifar10": _Layout(
        "cifar-10-batches-py",
        "cifar-10-python.tar.gz",
        tuple(f"data_batch_{i}" for i in range(1, 6)),
        ("test_batch",),
        "batches.meta",
        "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
    ),
    "cifar100": _Layout(
        "cifar-100-python",
        "cifar-100-python.tar.gz",
        ("train",),
        ("test",),
        "meta",
        "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
    ),
}

# What a CIFAR pickle may build: numpy arrays (as pickled by numpy 1.x and 2.x, with
# protocol 2 or 5) and the bytes helper protocol 2 uses. Nothing else is importable.
_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),
}


class _SafeUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a CIFAR file")
        if module.startswith("numpy"):
            # Resolve numpy 1.x names on numpy 2 and back without a deprecation warning.
            np_core = getattr(np, "_core", None) or np.core
            if name == "_reconstruct":
                return np_core.multiarray._reconstruct
            if name == "_frombuffer":
                return np_core.numeric._frombuffer
        return super().find_class(module, name)


def _unpickle(raw: bytes, where: str) -> dict[str, Any]:
    """Load one CIFAR pickle (written by Python 2 or 3) into a dict with str keys."""
    try:
        # latin1 reads Python 2 str as text and Python 2 numpy buffers byte for byte.
        obj = _SafeUnpickler(io.BytesIO(raw), encoding="latin1").load()
    except Exception as e:
        raise DataError(f"{where} is not a CIFAR python-format batch: {e}") from None
    if not isinstance(obj, dict):
        raise DataError(f"{where} must hold a dict, found {type(obj).__name__}")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in obj.items()}


def _names(values: Any, where: str) -> list[str]:
    if not isinstance(values, (list, tuple)):
        raise DataError(f"{where}: class names must be a list, found {type(values).__name__}")
    return [v.decode() if isinstance(v, bytes) else str(v) for v in values]


class _Source:
    """The member files of the CIFAR layout, from the folder or (read in memory) the tar.gz."""

    def __init__(self, name: str, root: str | None) -> None:
        self.layout = lay = LAYOUTS[name]
        self.needed = (*lay.train, *lay.test, lay.meta)
        expected = (
            f"expected the {name} python version: {lay.archive} (from {lay.url}) or its "
            f"extracted folder {lay.folder}/ holding {', '.join(self.needed)}"
        )
        if root is None:
            raise DataError(f"data.root is not set; {expected}")
        path = Path(root).expanduser()
        if not path.exists():
            raise DataError(f"data.root={root!r} does not exist; {expected}")
        self.blobs: dict[str, bytes] | None = None  # member name -> bytes, for an archive
        if path.is_file():
            self._read_tar(path, expected)
        elif (path / lay.train[0]).is_file():
            pass
        elif (path / lay.folder / lay.train[0]).is_file():
            path = path / lay.folder
        elif (path / lay.archive).is_file():
            path = path / lay.archive
            self._read_tar(path, expected)
        else:
            found = sorted(p.name for p in path.iterdir())[:8]
            raise DataError(f"data.root={root!r} holds {found or 'nothing'}; {expected}")
        self.where = str(path)

    def _read_tar(self, path: Path, expected: str) -> None:
        try:
            with tarfile.open(path, "r:*") as tar:
                # Match on the base name, so an archive repacked under another top folder
                # works; nothing is extracted to disk.
                members = {Path(m.name).name: m for m in tar.getmembers() if m.isfile()}
                missing = [n for n in self.needed if n not in members]
                if missing:
                    raise DataError(f"archive {str(path)!r} lacks {', '.join(missing)}; {expected}")
                self.blobs = {n: tar.extractfile(members[n]).read() for n in self.needed}  # type: ignore[union-attr]
        except (tarfile.TarError, OSError, EOFError) as e:
            raise DataError(
                f"{str(path)!r} is not a readable tar archive ({e}); {expected}"
            ) from None

    def read(self, member: str) -> tuple[bytes, str]:
        """The bytes of one member file and where it came from (for messages)."""
        if self.blobs is not None:
            return self.blobs[member], f"{self.where}:{member}"
        p = Path(self.where) / member
        if not p.is_file():
            raise DataError(
                f"{self.where!r} has no file {member!r}; a complete {self.layout.folder}/ "
                f"holds {', '.join(self.needed)}"
            )
        return p.read_bytes(), str(p)


def _read_batches(
    src: _Source, members: tuple[str, ...], label_key: str
) -> tuple[torch.Tensor, list[int]]:
    images, labels = [], []
    for member in members:
        raw, where = src.read(member)
        d = _unpickle(raw, where)
        if "data" not in d or label_key not in d:
            raise DataError(
                f"{where} lacks key 'data' or {label_key!r} (has {sorted(d)}); is this the "
                "right CIFAR version (CIFAR-10 batches have 'labels', CIFAR-100 'fine_labels')?"
            )
        data = np.asarray(d["data"])
        ys = [int(y) for y in d[label_key]]
        if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
            raise DataError(
                f"{where}: 'data' must be uint8 rows of 3072 values, got {data.dtype} {data.shape}"
            )
        if len(ys) != len(data):
            raise DataError(f"{where}: {len(data)} images but {len(ys)} labels")
        images.append(torch.from_numpy(data.reshape(-1, 3, 32, 32).copy()))
        labels.extend(ys)
    return torch.cat(images), labels


def read_cifar(
    name: str, root: str | None, labels: str = "fine"
) -> tuple[TensorImages, TensorImages, list[str]]:
    """The official train and test sets of ``cifar10``/``cifar100``, and the class names."""
    if labels not in ("fine", "coarse"):
        raise DataError(f"data.cifar_labels must be fine or coarse, got {labels!r}")
    src = _Source(name, root)
    label_key = "labels" if name == "cifar10" else f"{labels}_labels"
    names_key = "label_names" if name == "cifar10" else f"{labels}_label_names"
    raw, where = src.read(src.layout.meta)
    meta = _unpickle(raw, where)
    if names_key not in meta:
        raise DataError(f"{where} lacks {names_key!r} (has {sorted(meta)})")
    classes = _names(meta[names_key], where)
    train_x, train_y = _read_batches(src, src.layout.train, label_key)
    test_x, test_y = _read_batches(src, src.layout.test, label_key)
    for split, ys in (("train", train_y), ("test", test_y)):
        bad = [y for y in ys if not 0 <= y < len(classes)]
        if bad:
            raise DataError(
                f"{src.where}: {split} label {bad[0]} is outside the {len(classes)} classes "
                "named in the meta file"
            )
    return TensorImages(train_x, train_y), TensorImages(test_x, test_y), classes


def cifar_splits(
    name: str, root: str | None, labels: str, val_fraction: float, split_seed: int
) -> Splits:
    """Train (minus a stratified validation share), val carved from train, official test."""
    train, test, classes = read_cifar(name, root, labels)
    if name == "cifar10":
        mean, std = CIFAR10_MEAN, CIFAR10_STD
    else:
        mean, std = CIFAR100_MEAN, CIFAR100_STD
    return carve_val(
        train,
        test,
        classes,
        mean,
        std,
        val_fraction,
        split_seed,
        info={"source": str(root), **({"labels": labels} if name == "cifar100" else {})},
    )
