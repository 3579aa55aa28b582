"""Image files on disk: decoding every kind found in the wild, and the bad-file policy.

:func:`load_image` returns an upright RGB PIL image for JPEG/PNG/... files in any mode
(CMYK, grayscale, palette, RGBA, 16-bit, EXIF-rotated) or raises :class:`BadImageError`
naming the file and the reason (truncated, not an image, ...).

:class:`ImageFiles` is the reader of image-folder and list datasets. Its policy
``on_bad_file`` decides what a bad file does:

- ``error``: raise :class:`BadImageError` (path and reason). Raised in a DataLoader
  worker, it reaches the main process as the same type with the same one-line message.
- ``skip``: log the path once (logger ``resnext.data``), remember it, and return the next
  readable sample of the same split in index order instead. The replacement is
  deterministic, so every batch stays full, the number of steps per epoch does not
  change and a resumed run sees exactly the samples it would have seen; dropping samples
  in ``collate_fn`` instead would make batch sizes depend on which files are bad.
  :func:`bad_file_report` gives the count and paths of skipped files (also from worker
  processes: the flags live in shared memory).

PIL's ``ImageFile.LOAD_TRUNCATED_IMAGES`` is left False on purpose: with it, a truncated
JPEG silently decodes with its missing part grey.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps
from torch.utils.data import Dataset

from ..errors import DataError

log = logging.getLogger("resnext.data")

#: File name endings read as images (lower case); anything else in a class folder is ignored.
IMAGE_EXTENSIONS = (
    ".jpg",
    ".jpeg",
    ".jfif",
    ".png",
    ".ppm",
    ".pgm",
    ".pbm",
    ".bmp",
    ".tif",
    ".tiff",
    ".webp",
    ".gif",
)

BAD_FILE_POLICIES = ("error", "skip")

# Composite transparent images over white, as image viewers show them; dropping the alpha
# channel instead exposes whatever colour the encoder left under transparent pixels.
_BACKGROUND = (255, 255, 255)


class BadImageError(DataError):
    """An image file that cannot be decoded; the message names the file and the reason."""

    def __init__(self, message: str, path: str | None = None, reason: str | None = None) -> None:
        self.path, self.reason = path, reason
        # A DataLoader worker's exception is rebuilt in the main process as
        # ``type(msg)`` with the worker's whole traceback in ``msg``; keep only our own
        # message (its last line) so the user sees the path and reason, not a stack.
        if "Traceback (most recent call last)" in message:
            worker = message.split(".", 1)[0].replace("Caught BadImageError ", "")
            last = message.rstrip().splitlines()[-1]
            message = last.split(": ", 1)[1] if ": " in last else last
            message = f"{message} ({worker})"
        super().__init__(message)


def is_image_file(name: str) -> bool:
    """Whether a file name has an image extension and is not hidden (e.g. ``._x.jpg``)."""
    return not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS)


def _sixteen_bit_to_rgb(img: Image.Image) -> Image.Image:
    # PIL's convert("RGB") clips 16-bit values at 255 (an almost white image); scale
    # 0..65535 to 0..255 instead (x * 255 / 65535, rounded).
    arr = np.asarray(img).astype(np.uint32)
    arr8 = ((arr * 255 + 32767) // 65535).clip(0, 255).astype(np.uint8)
    return Image.fromarray(arr8, mode="L").convert("RGB")


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert a decoded PIL image of any mode to 8-bit RGB (alpha composited over white)."""
    mode = img.mode
    if mode == "RGB":
        return img
    if mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
        mode = img.mode
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (*_BACKGROUND, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if mode.startswith("I;16") or mode == "I":
        return _sixteen_bit_to_rgb(img)
    if mode == "F":
        raise ValueError("32-bit float images are not supported; save it as 8- or 16-bit")
    return img.convert("RGB")  # L, 1, CMYK, YCbCr, LAB, HSV, RGBX


def load_image(path: str | os.PathLike[str]) -> Image.Image:
    """Decode an image file to an upright RGB PIL image, or raise :class:`BadImageError`."""
    try:
        with Image.open(path) as img:
            img.load()  # decode now: a truncated file fails here, not later in a transform
            upright = ImageOps.exif_transpose(img)  # camera photos stored rotated
            return to_rgb(upright if upright is not None else img)
    except Exception as e:  # PIL's decoders raise many types on broken files
        if isinstance(e, FileNotFoundError):
            reason = "no such file (moved or deleted?)"
        elif isinstance(e, Image.UnidentifiedImageError):
            reason = "not an image file PIL can read"
        else:
            reason = str(e) or type(e).__name__
        raise BadImageError(
            f"cannot read image {str(path)!r}: {reason}; repair or remove the file, or set "
            "data.on_bad_file=skip to skip such files",
            str(path),
            reason,
        ) from None


class ImageFiles(Dataset):
    """Images on disk with int labels; raw samples are ``(PIL RGB image, label)``.

    Args:
        samples: ``(path, label)`` pairs, in a fixed order (sorted by the readers).
        on_bad_file: ``error`` or ``skip`` (see the module docstring).
        name: what the split is called in messages, e.g. ``train``.
    """

    def __init__(
        self, samples: Sequence[tuple[str, int]], on_bad_file: str = "error", name: str = "images"
    ) -> None:
        if on_bad_file not in BAD_FILE_POLICIES:
            raise ValueError(f"on_bad_file must be error or skip, got {on_bad_file!r}")
        self.paths = [str(p) for p, _ in samples]
        self.labels = [int(y) for _, y in samples]
        self.on_bad_file = on_bad_file
        self.name = name
        # 1 = known bad (already logged). In shared memory so that a worker's finding is
        # seen by the main process and by the other workers (fork, spawn or forkserver).
        self._bad = torch.zeros(len(self.paths), dtype=torch.uint8).share_memory_()

    def __len__(self) -> int:
        return len(self.paths)

    def _read(self, index: int) -> Image.Image | None:
        """The image, or None (after logging it once) if it is bad and the policy is skip."""
        if self._bad[index]:
            return None
        try:
            return load_image(self.paths[index])
        except BadImageError as e:
            if self.on_bad_file == "error":
                raise
            if not self._bad[index]:
                self._bad[index] = 1
                log.warning("skipping unreadable image %s: %s", e.path, e.reason)
            return None

    def __getitem__(self, index: int) -> tuple[Image.Image, int]:
        n = len(self.paths)
        for k in range(n):
            i = (index + k) % n  # the next readable sample of this split stands in
            img = self._read(i)
            if img is not None:
                return img, self.labels[i]
        raise BadImageError(f"all {n} images of the {self.name} split are unreadable")

    def bad_paths(self) -> list[str]:
        """Paths found unreadable so far (skip policy), in index order."""
        return [self.paths[i] for i in torch.nonzero(self._bad).flatten().tolist()]


@dataclass
class BadFileReport:
    """Files skipped so far by a dataset under ``data.on_bad_file=skip``."""

    paths: list[str] = field(default_factory=list)

    @property
    def count(self) -> int:
        return len(self.paths)

    def __str__(self) -> str:
        if not self.paths:
            return "no unreadable files"
        return (
            f"skipped {self.count} unreadable file(s) (data.on_bad_file=skip), e.g. {self.paths[0]}"
        )


def bad_file_report(dataset: Any) -> BadFileReport:
    """Count the unreadable files a dataset (or a transformed/subset view of it) skipped:
    image files, or images inside WebDataset shards.

    Call it at the end of an epoch; datasets without image files report zero.
    """
    seen: list[str] = []
    stack = [dataset]
    while stack:
        ds = stack.pop()
        if isinstance(ds, ImageFiles):
            seen.extend(ds.bad_paths())
        elif hasattr(ds, "indices") and hasattr(ds, "base"):  # a Subset view
            base = ds.base
            if isinstance(base, ImageFiles):
                bad = set(torch.nonzero(base._bad).flatten().tolist())
                seen.extend(base.paths[i] for i in ds.indices if i in bad)
            else:
                stack.append(base)
        elif callable(getattr(ds, "bad_paths", None)):  # a shard split (resnext.data.shards)
            seen.extend(ds.bad_paths())
        elif hasattr(ds, "base"):
            stack.append(ds.base)
        elif hasattr(ds, "dataset"):  # torch.utils.data.Subset and friends
            stack.append(ds.dataset)
    return BadFileReport(sorted(set(seen)))


def list_images(folder: Path) -> list[Path]:
    """Image files under ``folder`` (recursively, following links), sorted for a fixed order."""
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        found.extend(Path(dirpath) / f for f in sorted(filenames) if is_image_file(f))
    return found
