"""Carving splits where a dataset ships none, and recording them so they never move.

Two cases:

- :func:`carve_val`: a dataset with a train and a test split but no validation split
  (CIFAR, MNIST): ``val_fraction`` of train, per class, with a fixed seed. The files never
  change, so the same seed always gives the same split; nothing needs recording.
- :func:`carve_one_folder`: an image folder that is one tree of classes (Caltech-101/256
  style ``root/<class>/*``): ``val_fraction`` and ``test_fraction`` of each class's images.
  Files on disk do change (images added, removed, a class renamed), and a test split
  carved again from changed files would mix images the model trained on into its test.
  So the split is a :class:`SplitRecord`: the run writes it to its folder as
  ``splits.json``, and a resume and ``resnext eval`` use that file list rather than
  carving again; a recorded file that is gone is an error, a new file a note.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ..config import DataConfig
from ..errors import ConfigError, DataError
from .base import Splits, Subset, TensorImages
from .digits import stratified_split

#: The file a run writes next to its checkpoints when it carved its splits from one folder.
SPLITS_FILE = "splits.json"
SPLITS_FORMAT = "resnext-splits"
SPLIT_NAMES = ("train", "val", "test")


def carve_val(
    train: TensorImages,
    test: TensorImages | None,
    classes: list[str],
    mean: tuple[float, ...],
    std: tuple[float, ...],
    val_fraction: float,
    split_seed: int,
    info: dict[str, Any],
) -> Splits:
    """Hold out ``val_fraction`` of train per class (seeded) as val; test stays untouched."""
    if val_fraction <= 0:
        return Splits(train, None, test, classes, mean, std, {**info, "val": "none"})
    keep, val = stratified_split(train.labels, (val_fraction,), split_seed)
    note = f"{len(val)} images ({val_fraction:g}) carved from train, split_seed={split_seed}"
    return Splits(
        Subset(train, keep), Subset(train, val), test, classes, mean, std, {**info, "val": note}
    )


@dataclass(frozen=True)
class SplitRecord:
    """Which files of a one-folder dataset are in train, val and test.

    ``files`` maps each split to paths relative to the dataset root, POSIX-style,
    ``<class>/<file>``: the first component is the class, so the record alone gives the
    labels, and the dataset may move (``data.root`` may change on resume).
    """

    classes: list[str]  # in label order (sorted folder names, as torchvision's ImageFolder)
    files: dict[str, list[str]]  # "train" / "val" / "test" -> relative paths, sorted
    split_seed: int
    val_fraction: float
    test_fraction: float
    root: str  # where the files were when the split was carved (for the reader's messages)

    def samples(self, split: str) -> list[tuple[str, int]]:
        """``(relative path, label)`` pairs of one split."""
        index = {c: i for i, c in enumerate(self.classes)}
        return [(p, index[p.split("/", 1)[0]]) for p in self.files.get(split, [])]

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": SPLITS_FORMAT,
            "version": 1,
            "root": self.root,
            "split_seed": self.split_seed,
            "val_fraction": self.val_fraction,
            "test_fraction": self.test_fraction,
            "classes": list(self.classes),
            "counts": {s: len(self.files.get(s, [])) for s in SPLIT_NAMES},
            **{s: list(self.files.get(s, [])) for s in SPLIT_NAMES},
        }

    @classmethod
    def from_dict(cls, d: Any, where: str) -> SplitRecord:
        """Check a record read from ``where`` (a path, for messages) and build it."""
        if not isinstance(d, dict) or d.get("format") != SPLITS_FORMAT:
            raise DataError(
                f'{where} is not a split record (no "format": "{SPLITS_FORMAT}"); give the '
                f"{SPLITS_FILE} a training run wrote to its run folder"
            )
        if d.get("version") != 1:
            raise DataError(f"{where}: split record version {d.get('version')!r} is not 1")
        classes = d.get("classes")
        if not isinstance(classes, list) or not all(isinstance(c, str) for c in classes):
            raise DataError(f'{where}: "classes" must be a list of class folder names')
        known = set(classes)
        files: dict[str, list[str]] = {}
        for split in SPLIT_NAMES:
            paths = d.get(split, [])
            if not isinstance(paths, list) or not all(isinstance(p, str) for p in paths):
                raise DataError(f'{where}: "{split}" must be a list of relative file paths')
            stray = [p for p in paths if p.split("/", 1)[0] not in known or "/" not in p]
            if stray:
                raise DataError(
                    f"{where}: {split} lists {len(stray)} file(s) outside the recorded class "
                    f"folders, e.g. {stray[:3]}; the record is damaged, write it again with a "
                    "new training run"
                )
            files[split] = paths
        seen: dict[str, str] = {}
        for split, paths in files.items():
            for path in paths:
                if path in seen:
                    where_else = "twice" if seen[path] == split else f"and in {seen[path]}"
                    raise DataError(
                        f"{where}: {path!r} is listed in {split} {where_else}; a file belongs "
                        "to one split only (else the model could be tested on what it trained "
                        "on): the record is damaged, write it again with a new training run"
                    )
                seen[path] = split
        try:
            return cls(
                classes,
                files,
                int(d["split_seed"]),
                float(d["val_fraction"]),
                float(d["test_fraction"]),
                str(d["root"]),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise DataError(f"{where}: split record lacks a valid {e}") from None

    def write(self, path: str | Path) -> None:
        """Write the record as JSON, atomically (a crash never leaves half a file)."""
        path = Path(path)
        fd, tmp = tempfile.mkstemp(prefix=".splits-", suffix=".json", dir=path.parent)
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(self.to_dict(), f, indent=1)
                f.write("\n")
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    @classmethod
    def read(cls, path: str | Path) -> SplitRecord:
        path = Path(path)
        if not path.is_file():
            raise DataError(
                f"data.split_file={str(path)!r} does not exist; give the {SPLITS_FILE} of the "
                "run whose split you want, or data.split_file=null to carve one"
            )
        try:
            d = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise DataError(f"cannot read the split record {str(path)!r}: {e}") from None
        return cls.from_dict(d, repr(str(path)))


def check_fractions(val_fraction: float, test_fraction: float) -> None:
    """Refuse val and test shares that leave nothing to train on."""
    if val_fraction + test_fraction >= 1.0:
        raise ConfigError(
            f"data.val_fraction + data.test_fraction = {val_fraction:g} + {test_fraction:g} "
            "leaves no images to train on; their sum must be below 1"
        )


def _part_sizes(n: int, fractions: Sequence[float]) -> list[int]:
    """The sizes :func:`stratified_split` gives one class of ``n`` images: train first."""
    later = [round(n * f) for f in fractions]
    return [n - sum(later), *later]


def _smallest_class(fractions: Sequence[float]) -> int:
    """The fewest images a class needs for one in train and in each split with a share
    (for the error message; computed, not counted up, since a share of 1e-9 needs 5e8).

    A split with share f gets ``round(n * f)`` images: none while ``n * f <= 0.5``, so the
    smallest n is above ``0.5 / f`` for every share. Train gets the rest, which rounding
    makes uneven in n: the sizes from that bound on are tried, a bounded number of them.
    Past those (train's share is tiny), the first n with ``n * (1 - sum) - (number of
    shares) / 2 >= 1`` surely leaves train one image: a bound, within a factor of about
    three of the smallest."""
    shares = [f for f in fractions if f > 0]
    low = max([1, *(math.floor(0.5 / f) for f in shares)])
    for n in range(max(1, low - 1), low + _SIZES_TRIED):  # from one below: float slack
        if _enough(_part_sizes(n, fractions), fractions):
            return n
    rest = 1.0 - sum(fractions)
    if rest <= 0:  # callers check the fractions first (check_fractions)
        raise ValueError(f"shares {list(fractions)} leave nothing to train on")
    n = max(low, math.ceil((1 + len(shares) / 2) / rest))
    while not _enough(_part_sizes(n, fractions), fractions):  # float slack: a step or two
        n += 1
    return n


#: How many class sizes :func:`_smallest_class` tries from its lower bound.
_SIZES_TRIED = 1000


def _enough(sizes: list[int], fractions: Sequence[float]) -> bool:
    return sizes[0] >= 1 and all(s >= 1 for s, f in zip(sizes[1:], fractions, strict=True) if f > 0)


def carve_one_folder(
    samples: Sequence[tuple[str, int]],
    classes: list[str],
    root: Path,
    val_fraction: float,
    test_fraction: float,
    split_seed: int,
) -> SplitRecord:
    """Split one tree's ``(path, label)`` samples per class into train/val/test (seeded).

    Every class must keep at least one image in train and in each split with a share above
    0: otherwise its accuracy in that split would silently not exist.
    """
    check_fractions(val_fraction, test_fraction)
    fractions = (val_fraction, test_fraction)
    counts = [0] * len(classes)
    for _, y in samples:
        counts[y] += 1
    short = [
        (classes[c], n)
        for c, n in enumerate(counts)
        if not _enough(_part_sizes(n, fractions), fractions)
    ]
    if short:
        shown = ", ".join(f"{name!r} ({n})" for name, n in short[:5])
        raise DataError(
            f"{len(short)} class folder(s) under {str(root)!r} hold too few images to split "
            f"with data.val_fraction={val_fraction:g} and data.test_fraction="
            f"{test_fraction:g}: {shown}{', ...' if len(short) > 5 else ''}; each class needs "
            f"{_smallest_class(fractions)} images (one in train and one in each split with a "
            "share). Add images, remove those folders, or change the fractions"
        )
    parts = stratified_split([y for _, y in samples], fractions, split_seed)
    rel = [Path(p).relative_to(root).as_posix() for p, _ in samples]
    return SplitRecord(
        list(classes),
        {name: sorted(rel[i] for i in idx) for name, idx in zip(SPLIT_NAMES, parts, strict=True)},
        split_seed,
        val_fraction,
        test_fraction,
        str(root),
    )


def apply_record(record: SplitRecord, on_disk: Sequence[str], where: str) -> list[str]:
    """Check a record against the image files under the dataset root now (``on_disk``:
    their paths relative to it); return notes for the user.

    A recorded file that is gone is an error: the split cannot be reproduced. Files in no
    recorded split (added since) are left out, with a note.
    """
    present = set(on_disk)
    missing = {s: [p for p in record.files.get(s, []) if p not in present] for s in SPLIT_NAMES}
    n_missing = sum(len(v) for v in missing.values())
    if n_missing:
        per = ", ".join(f"{len(v)} of {s}" for s, v in missing.items() if v)
        example = next(v for v in missing.values() if v)[:3]
        raise DataError(
            f"the files on disk no longer match the split recorded in {where}: {n_missing} "
            f"recorded file(s) are gone ({per}), e.g. {example}. The recorded split cannot be "
            "reproduced: restore the files, or point data.root at the copy the run used (a "
            "new split needs a new training run, with data.split_file=null)"
        )
    recorded = {p for paths in record.files.values() for p in paths}
    new = sorted(present - recorded)
    if not new:
        return []
    return [
        f"{len(new)} image(s) under data.root are in no split recorded in {where} (added "
        f"after the split was made?), e.g. {new[:3]}; they are left out, so the recorded "
        "test split stays one the model never trained on"
    ]


def recorded_split(cfg: DataConfig, run_folder: str | Path) -> DataConfig:
    """``cfg`` with ``split_file`` set to ``run_folder/splits.json`` where that run recorded a
    split: what a resume and ``resnext eval`` of the run's checkpoints read."""
    path = Path(run_folder) / SPLITS_FILE
    return replace(cfg, split_file=str(path)) if path.is_file() else cfg
