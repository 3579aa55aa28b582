"""The pack format: ``index.json`` and the shard files it lists; ``resnext pack`` writes it
(:mod:`resnext.data.pack`) and ``data.name=webdataset`` reads it, both through this module.

A pack is a folder (``data.root``)::

    index.json          format and version, classes, mean/std, the source (reader and its
                        data config), and per split: the image count, the count of each
                        class, its order (the train split's packing seed), and each shard's
                        file, sample count, size in bytes and SHA-256
    train-000000.tar    WebDataset tar shards: per sample ``<key>.<ext>``, the image (the
    train-000001.tar    source file's own bytes, or PNG for in-memory datasets such as
    val-000000.tar      digits, MNIST or CIFAR) and ``<key>.cls``, the label as decimal
    ...                 text; ``<key>`` is the sample's index in the source split (8 digits)
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from ...errors import DataError, ResnextError

FORMAT = "resnext-webdataset"  # index.json's "format"
VERSION = 1  # index.json's "version": what this reader reads
INDEX_FILE = "index.json"
SPLITS = ("train", "val", "test")
KEY_DIGITS = 8  # sample keys: the index in the source split, zero-padded
LABEL_EXT = "cls"  # the WebDataset convention for an integer class label
_HEX = set("0123456789abcdef")


class ShardError(DataError):
    """A pack that cannot be read as its index describes; the message names the file.

    Raised in a DataLoader worker, it reaches the main process as the same type; the
    worker's traceback is dropped from the message (as :class:`BadImageError` does)."""

    def __init__(self, message: str) -> None:
        if "Traceback (most recent call last)" in message:
            last = message.rstrip().splitlines()[-1]
            message = last.split(": ", 1)[1] if ": " in last else last
        super().__init__(message)


def import_webdataset() -> ModuleType:
    """The ``webdataset`` package, or a :class:`DataError` that says how to install it."""
    try:
        import webdataset
    except ModuleNotFoundError as e:
        if e.name != "webdataset":
            raise
        raise DataError(
            "WebDataset shards need the webdataset package: pip install 'resnext[shards]' "
            "(or pip install webdataset)"
        ) from None
    return webdataset


@dataclass(frozen=True)
class Shard:
    """One tar file of a split, as the index records it."""

    path: Path
    count: int  # samples
    bytes: int  # file size
    sha256: str | None = None  # of the file's bytes, as written (packs before it: None)

    @classmethod
    def from_entry(cls, root: Path, entry: dict[str, Any]) -> Shard:
        """The shard an index entry (one of a split's ``"shards"``) describes."""
        return cls(
            root / entry["file"], int(entry["count"]), int(entry["bytes"]), entry.get("sha256")
        )

    def entry(self) -> dict[str, Any]:
        """This shard as the index records it."""
        out: dict[str, Any] = {"file": self.path.name, "count": self.count, "bytes": self.bytes}
        if self.sha256 is not None:
            out["sha256"] = self.sha256
        return out


def new_index(
    classes: list[str],
    mean: list[float],
    std: list[float],
    source: dict[str, Any],
    created_by: str,
) -> dict[str, Any]:
    """An index with no splits yet: the packer adds each with :func:`split_entry`."""
    return {
        "format": FORMAT,
        "version": VERSION,
        "classes": list(classes),
        "mean": list(mean),
        "std": list(std),
        "source": source,
        "splits": {},
        "created_by": created_by,
    }


def split_entry(
    shards: list[Shard], class_counts: list[int], order: str, skipped: list[str]
) -> dict[str, Any]:
    """A split's index entry: its image count, the count of each class, its shards, how its
    samples were ordered when packed, and the unreadable files left out (if any)."""
    entry: dict[str, Any] = {
        "count": sum(s.count for s in shards),
        "class_counts": class_counts,
        "shards": [s.entry() for s in shards],
    }
    if skipped:
        entry["skipped"] = skipped
    entry["order"] = order
    return entry


def write_index(folder: Path, index: dict[str, Any]) -> None:
    """Write ``index.json`` atomically: a folder without one is an unfinished pack."""
    tmp = folder / (INDEX_FILE + ".tmp")
    tmp.write_text(json.dumps(index, indent=1) + "\n")
    os.replace(tmp, folder / INDEX_FILE)


def read_index(root: str | Path | None) -> dict[str, Any]:
    """The checked ``index.json`` of a pack folder, or a :class:`ShardError` saying why not."""
    if root is None:
        raise ShardError(
            "data.root is not set; give the folder `resnext pack` wrote (index.json and the "
            ".tar shards)"
        )
    folder = Path(root).expanduser()
    if not folder.is_dir():
        raise ShardError(
            f"data.root={str(root)!r} is not a folder; give the folder `resnext pack` wrote"
        )
    path = folder / INDEX_FILE
    if not path.is_file():
        hint = (
            "it holds .tar files but no index, so the pack did not finish: run resnext pack again"
            if any(folder.glob("*.tar"))
            else "write one with `resnext pack CONFIG -o FOLDER`"
        )
        raise ShardError(f"{path} does not exist: {folder} is not a pack ({hint})")
    try:
        index = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ShardError(f"{path} cannot be read as JSON ({e}); run resnext pack again") from None
    if not isinstance(index, dict) or index.get("format") != FORMAT:
        got = index.get("format") if isinstance(index, dict) else type(index).__name__
        raise ShardError(f"{path} is not a resnext pack index (format {got!r}, not {FORMAT!r})")
    if index.get("version") != VERSION:
        raise ShardError(
            f"{path} is pack format version {index.get('version')!r}; this resnext reads "
            f"version {VERSION}: pack the dataset again with it"
        )
    try:
        _check_index(index)
    except (KeyError, TypeError, ValueError) as e:
        if isinstance(e, ResnextError):
            raise
        raise ShardError(
            f"{path} is damaged ({type(e).__name__}: {e}); run resnext pack again"
        ) from None
    return index


def _check_index(index: dict[str, Any]) -> None:
    classes = index["classes"]
    if not classes or not all(isinstance(c, str) for c in classes):
        raise ValueError("classes must be a non-empty list of names")
    if len(index["mean"]) != len(index["std"]):
        raise ValueError("mean and std differ in length")
    if not isinstance(index.get("source") or {}, dict):
        raise ValueError('"source" must be an object')
    if not isinstance(index["splits"], dict):
        raise ValueError('"splits" must be an object of split name -> split')
    for name, entry in index["splits"].items():
        if name not in SPLITS:
            raise ValueError(f"unknown split {name!r}")
        if not isinstance(entry, dict) or not isinstance(entry.get("shards"), list):
            raise ValueError(f"split {name} must be an object with a list of shards")
        if not all(isinstance(s, dict) for s in entry["shards"]):
            raise ValueError(f"split {name}: every shard entry must be an object")
        counts = [int(s["count"]) for s in entry["shards"]]
        if sum(counts) != int(entry["count"]) or any(c < 1 for c in counts):
            raise ValueError(
                f"split {name}: its shards hold {sum(counts)} samples, its count says "
                f"{entry['count']}"
            )
        for s in entry["shards"]:
            if Path(s["file"]).name != s["file"] or int(s["bytes"]) < 1:
                raise ValueError(f"split {name}: bad shard entry {s}")
            digest = s.get("sha256")
            if digest is not None and not (
                isinstance(digest, str) and len(digest) == 64 and set(digest) <= _HEX
            ):
                raise ValueError(f"split {name}: shard {s['file']} has no valid sha256")
