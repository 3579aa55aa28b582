"""``resnext pack``: any dataset the readers read, written as WebDataset shards.

Each split the reader gives becomes one shard set (``train-000000.tar``, ...; the layout
and ``index.json`` are described in :mod:`resnext.data.shards.index`). Images are stored encoded:
the source file's own bytes where the reader reads files (nothing is re-encoded, so a
JPEG decodes to the same pixels from either place), PNG (lossless) for in-memory datasets.
The train split is written in an order shuffled with ``seed`` so that every shard mixes
the classes (a folder tree lists them class by class, and a shuffle buffer only mixes
nearby samples); val and test keep the reader's order. By default every image is decoded
once while packing, so a broken file is found now (``data.on_bad_file``: ``error`` stops
naming it, ``skip`` leaves it out and lists it in the index), not in the middle of training.
The index is written last: a folder without one is an unfinished pack.
"""

from __future__ import annotations

import hashlib
import io
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from ..config import DataConfig
from ..errors import ConfigError, DataError
from .build import build_raw_splits
from .images import BadImageError, ImageFiles, load_image, to_rgb
from .shards.index import (
    INDEX_FILE,
    KEY_DIGITS,
    LABEL_EXT,
    SPLITS,
    Shard,
    import_webdataset,
    new_index,
    split_entry,
    write_index,
)

DEFAULT_SHARD_BYTES = 256 * 1024**2  # WebDataset's usual advice: shards of 100 MB to 1 GB
_TAR_BLOCK = 512
# Modes PNG stores as they are; others (CMYK, YCbCr, float) are converted to RGB first.
_PNG_MODES = {"1", "L", "LA", "P", "RGB", "RGBA", "I", "I;16"}


def parse_size(text: str) -> int:
    """``"256MB"``, ``"1GiB"``, ``"500k"``, ``"1000000"`` -> bytes (k/M/G are powers of 1024)."""
    units = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}
    t = text.strip().lower().removesuffix("b").removesuffix("i")
    number, unit = (t[:-1], t[-1]) if t and t[-1] in "kmgt" else (t, "")
    try:
        value = float(number) * units[unit]
    except ValueError:
        value = math.nan
    if not math.isfinite(value):  # "inf", "nan", "1e999"
        raise ConfigError(f"shard size {text!r} is not a size; write e.g. 256MB, 1GB or 500k")
    if value < 1:
        raise ConfigError(f"shard size must be positive, got {text!r}")
    return int(value)


def _file_source(ds: Any, index: int) -> tuple[str, int] | None:
    """(path, label) where sample ``index`` of ``ds`` is an image file (through subsets)."""
    while True:
        if isinstance(ds, ImageFiles):
            return ds.paths[index], ds.labels[index]
        if hasattr(ds, "indices") and (hasattr(ds, "base") or hasattr(ds, "dataset")):
            index = ds.indices[index]
            ds = ds.base if hasattr(ds, "base") else ds.dataset
            continue
        return None


def encode_png(image: Any) -> bytes:
    """A uint8 ``(C, H, W)`` tensor (C = 1 or 3) or a PIL image as PNG bytes (lossless)."""
    if isinstance(image, torch.Tensor):
        if image.dtype != torch.uint8 or image.ndim != 3 or image.shape[0] not in (1, 3):
            raise DataError(
                f"cannot pack an image tensor of {image.dtype} {tuple(image.shape)}: expected "
                "uint8 (C, H, W) with 1 or 3 channels"
            )
        array = image.permute(1, 2, 0).contiguous().numpy()
        image = Image.fromarray(array[:, :, 0] if image.shape[0] == 1 else array)
    if not isinstance(image, Image.Image):
        raise DataError(f"cannot pack a sample of type {type(image).__name__}: not an image")
    if image.mode not in _PNG_MODES:
        image = to_rgb(image)
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


class _Encoded(Dataset):
    """Sample ``order[j]`` of a split, encoded for a shard: its key, extension, bytes and
    label, or the reason it is unreadable. A Dataset so a DataLoader's workers can share the
    reading, checking and encoding."""

    def __init__(self, ds: Dataset, order: Sequence[int], verify: bool) -> None:
        self.ds, self.order, self.verify = ds, list(order), verify

    def __len__(self) -> int:
        return len(self.order)

    def __getitem__(self, j: int) -> dict[str, Any]:
        index = self.order[j]
        key = f"{index:0{KEY_DIGITS}d}"
        source = _file_source(self.ds, index)
        if source is None:  # an in-memory image: store it as PNG
            image, label = self.ds[index]
            return {"key": key, "ext": "png", "data": encode_png(image), "label": int(label)}
        path, label = source
        out = {"key": key, "label": int(label), "path": path}
        try:
            data = Path(path).read_bytes()
            if self.verify:
                load_image(io.BytesIO(data))  # decode what will be stored
        except (OSError, BadImageError) as e:
            reason = e.reason if isinstance(e, BadImageError) else (e.strerror or str(e))
            return {**out, "bad": reason}
        ext = Path(path).suffix.lower().lstrip(".") or "img"
        return {**out, "ext": ext, "data": data}


def _first(batch: Any) -> Any:
    return batch


class _HashingFile:
    """A file opened for writing that hashes (SHA-256) every byte written through it, so a
    shard's digest costs no second read."""

    def __init__(self, path: Path) -> None:
        self._file = open(path, "wb")  # noqa: SIM115 (closed in close)
        self.name = str(path)
        self.sha256 = hashlib.sha256()

    def write(self, data: bytes) -> int:
        self.sha256.update(data)
        return self._file.write(data)

    def flush(self) -> None:
        self._file.flush()

    def close(self) -> None:
        self._file.close()


class _ShardWriter:
    """Writes one split's samples into ``{split}-NNNNNN.tar`` files of at most ``max_bytes``
    (and ``max_samples``) each, and records every shard's count, size and SHA-256."""

    def __init__(
        self, out: Path, split: str, max_bytes: int, max_samples: int | None, written: list[Path]
    ) -> None:
        self.wds = import_webdataset()
        self.out, self.split, self.written = out, split, written
        self.max_bytes, self.max_samples = max_bytes, max_samples
        self.shards: list[Shard] = []
        self._file: Any = None
        self._name = ""
        self._tar: Any = None
        self._count = self._bytes = 0

    @staticmethod
    def _member_bytes(n: int) -> int:
        return _TAR_BLOCK + -(-n // _TAR_BLOCK) * _TAR_BLOCK  # header + data in 512 B blocks

    def write(self, key: str, ext: str, data: bytes, label: int) -> None:
        cls = str(label).encode()
        size = self._member_bytes(len(data)) + self._member_bytes(len(cls))
        full = self._tar is not None and (
            self._bytes + size > self.max_bytes
            or (self.max_samples is not None and self._count >= self.max_samples)
        )
        if full:
            self._close()
        if self._tar is None:
            self._name = f"{self.split}-{len(self.shards):06d}.tar"
            self.written.append(self.out / self._name)
            self._file = _HashingFile(self.out / self._name)
            # mtime 0: packing the same data twice gives the same bytes.
            self._tar = self.wds.TarWriter(self._file, encoder=False, mtime=0)
            self._count, self._bytes = 0, 2 * _TAR_BLOCK  # the end-of-archive blocks
        self._tar.write({"__key__": key, ext: data, LABEL_EXT: cls})
        self._count += 1
        self._bytes += size

    def _close(self) -> None:
        self._tar.close()
        self._file.close()
        path = self.out / self._name
        # The SHA-256 is what a run's shard fingerprint hashes.
        shard = Shard(path, self._count, path.stat().st_size, self._file.sha256.hexdigest())
        self.shards.append(shard)
        self._tar = self._file = None

    def close(self) -> list[Shard]:
        if self._tar is not None:
            self._close()
        return self.shards


def pack_dataset(
    cfg: DataConfig,
    out: str | Path,
    *,
    shard_bytes: int = DEFAULT_SHARD_BYTES,
    shard_samples: int | None = None,
    splits: Sequence[str] = SPLITS,
    workers: int = 0,
    seed: int = 0,
    verify: bool = True,
    progress: bool = True,
    say: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Write the splits of the dataset ``cfg`` describes into shards under ``out``; returns
    the index (also written to ``out/index.json``).

    Args:
        shard_bytes, shard_samples: a shard is closed before it would pass either.
        splits: which of train, val and test to write (those the dataset has).
        workers: processes reading, checking and encoding the images.
        seed: the shuffle of the train split's order.
        verify: decode every image file once (found broken: ``cfg.on_bad_file``).
    """
    if cfg.name == "webdataset":
        raise ConfigError(
            "data.name=webdataset is already a pack; pack the dataset it came from instead"
        )
    unknown = sorted(set(splits) - set(SPLITS))
    if unknown:
        raise ConfigError(f"unknown split(s) {unknown}; choose among {', '.join(SPLITS)}")
    if shard_samples is not None and shard_samples < 1:
        raise ConfigError(f"shard samples must be at least 1, got {shard_samples}")
    folder = Path(out).expanduser()
    if (folder / INDEX_FILE).exists() or any(folder.glob("*.tar")):
        raise ConfigError(
            f"{folder} already holds a pack (index.json or .tar files); choose an empty folder "
            "or remove it first"
        )
    import_webdataset()
    raw = build_raw_splits(cfg)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"cannot create the pack folder {folder}: {e.strerror or e}") from e
    t0 = time.perf_counter()
    from .._version import __version__

    index = new_index(
        list(raw.classes),
        list(raw.mean),
        list(raw.std),
        {"name": cfg.name, "data": _plain(asdict(cfg)), "info": _plain(raw.info)},
        f"resnext {__version__}",
    )
    written: list[Path] = []
    try:
        for name in splits:
            ds = getattr(raw, name)
            if ds is None or len(ds) == 0:
                continue
            order = list(range(len(ds)))
            if name == "train":
                random.Random(seed).shuffle(order)
            writer = _ShardWriter(folder, name, shard_bytes, shard_samples, written)
            shards, class_counts, skipped = _pack_split(
                ds, order, writer, workers, verify, progress, cfg.on_bad_file, len(raw.classes)
            )
            how = f"shuffled, seed {seed}" if name == "train" else "the reader's"
            entry = split_entry(shards, class_counts, how, skipped)
            index["splits"][name] = entry
            say(
                f"{name}: {entry['count']} images in {len(entry['shards'])} shard(s), "
                f"{sum(s['bytes'] for s in entry['shards']) / 1024**2:.1f} MiB"
                + (f"; skipped {len(entry['skipped'])} unreadable" if entry.get("skipped") else "")
            )
    except BaseException:
        for path in written:  # an unfinished pack leaves nothing that looks like one
            path.unlink(missing_ok=True)
        raise
    if not index["splits"]:
        raise DataError(f"the {cfg.name} dataset has none of the splits {list(splits)} to pack")
    index["seconds"] = round(time.perf_counter() - t0, 1)
    write_index(folder, index)
    return index


def _pack_split(
    ds: Dataset,
    order: list[int],
    writer: _ShardWriter,
    workers: int,
    verify: bool,
    progress: bool,
    on_bad_file: str,
    num_classes: int,
) -> tuple[list[Shard], list[int], list[str]]:
    """The split written: its shards, the count of each class, the files left out."""
    name = writer.split
    loader = DataLoader(
        _Encoded(ds, order, verify), batch_size=None, num_workers=workers, collate_fn=_first
    )
    class_counts = [0] * num_classes
    skipped: list[str] = []
    try:
        for sample in tqdm(loader, total=len(order), desc=f"pack {name}", disable=not progress):
            if "bad" in sample:
                if on_bad_file == "error":
                    raise BadImageError(
                        f"cannot pack image {sample['path']!r}: {sample['bad']}; repair or "
                        "remove the file, or set data.on_bad_file=skip to leave it out",
                        sample["path"],
                        sample["bad"],
                    )
                skipped.append(sample["path"])
                continue
            writer.write(sample["key"], sample["ext"], sample["data"], sample["label"])
            class_counts[sample["label"]] += 1
    finally:
        shards = writer.close()
    return shards, class_counts, skipped


def _plain(obj: Any) -> Any:
    """JSON-ready: tuples as lists; entries that are objects (a reader's split record, say)
    are left out."""
    if isinstance(obj, dict):
        kept = {str(k): _plain(v) for k, v in obj.items()}
        return {k: v for k, v in kept.items() if v is not _SKIP}
    if isinstance(obj, (list, tuple)):
        return [v for v in map(_plain, obj) if v is not _SKIP]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    return _SKIP


_SKIP = object()
