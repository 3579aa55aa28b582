"""Bad and unusual image files, written here for real, under both data.on_bad_file policies."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageFile

from helpers import make_truncated_jpeg
from resnext.config import DataConfig
from resnext.data import (
    BadImageError,
    LoaderOrder,
    bad_file_report,
    build_splits,
    load_image,
    make_loader,
)
from resnext.data.base import Subset, TransformedDataset
from resnext.data.images import ImageFiles

RED, BLUE = (255, 0, 0), (0, 0, 255)


def _quadrants() -> np.ndarray:
    """40x30 (w x h) RGB: red top-left quadrant, blue elsewhere; orientation is visible."""
    arr = np.zeros((30, 40, 3), np.uint8)
    arr[:] = BLUE
    arr[:15, :20] = RED
    return arr


def make_text_as_jpeg(path: Path) -> None:
    path.write_text("this is a text file, not a picture\n")


def make_empty_png(path: Path) -> None:
    path.write_bytes(b"")


def make_cmyk_jpeg(path: Path) -> None:
    Image.fromarray(_quadrants()).convert("CMYK").save(path, quality=95)


def make_gray_png(path: Path) -> None:
    Image.fromarray(_quadrants()).convert("L").save(path)


def make_palette_png(path: Path) -> None:
    Image.fromarray(_quadrants()).convert("P", palette=Image.Palette.ADAPTIVE, colors=2).save(path)


def make_rgba_png(path: Path) -> None:
    arr = np.dstack([_quadrants(), np.full((30, 40), 255, np.uint8)])
    arr[:, -5:, 3] = 0  # transparent right strip, over a blue RGB
    Image.fromarray(arr, "RGBA").save(path)


def make_16bit_png(path: Path) -> None:
    arr = np.zeros((30, 40), np.uint16)
    arr[:15, :20] = 65535
    arr[15:, :] = 257 * 100  # 100 in 8-bit
    Image.fromarray(arr).save(path)  # mode I;16


def make_exif_rotated_jpeg(path: Path) -> None:
    img = Image.fromarray(_quadrants())
    exif = img.getexif()
    exif[0x0112] = 6  # Orientation: the camera was turned; display rotated 90 deg clockwise
    img.save(path, exif=exif, quality=95)


GOOD: dict[str, tuple[Callable[[Path], None], str]] = {
    "cmyk.jpg": (make_cmyk_jpeg, "CMYK"),
    "gray.png": (make_gray_png, "L"),
    "palette.png": (make_palette_png, "P"),
    "rgba.png": (make_rgba_png, "RGBA"),
    "sixteen.png": (make_16bit_png, "I;16"),
    "exif.jpg": (make_exif_rotated_jpeg, "RGB"),
}
BAD: dict[str, tuple[Callable[[Path], None], str]] = {
    "truncated.jpg": (make_truncated_jpeg, "truncated"),
    "text.jpg": (make_text_as_jpeg, "not an image file"),
    "empty.png": (make_empty_png, "not an image file"),
}


@pytest.mark.parametrize("name", sorted(GOOD))
def test_unusual_files_decode_to_upright_rgb(tmp_path: Path, name: str) -> None:
    make, mode = GOOD[name]
    path = tmp_path / name
    make(path)
    with Image.open(path) as raw:
        assert raw.mode == mode  # the file really is of that kind
    img = load_image(path)
    assert img.mode == "RGB"
    x = np.asarray(img).astype(int)
    if name == "exif.jpg":
        # rotated upright: 30 wide, 40 high; the red quadrant moved to the top right
        assert img.size == (30, 40)
        assert np.abs(x[5, -5] - RED).max() < 20 and np.abs(x[5, 5] - BLUE).max() < 20
        return
    assert img.size == (40, 30)
    if name == "sixteen.png":
        assert x[0, 0].tolist() == [255] * 3 and x[-1, -1].tolist() == [100] * 3
    elif name == "gray.png":
        gray = np.asarray(Image.fromarray(_quadrants()).convert("L"))
        assert x[0, 0].tolist() == [int(gray[0, 0])] * 3
    elif name == "rgba.png":
        assert x[0, 0].tolist() == list(RED) and x[0, -1].tolist() == [255, 255, 255]
    else:
        assert np.abs(x[0, 0] - RED).max() < 10 and np.abs(x[-1, -1] - BLUE).max() < 10


def test_palette_png_with_transparency(tmp_path: Path) -> None:
    img = Image.fromarray(_quadrants()).convert("P", palette=Image.Palette.ADAPTIVE, colors=2)
    red_index = img.getpixel((0, 0))
    img.save(tmp_path / "t.png", transparency=red_index)  # red becomes transparent
    x = np.asarray(load_image(tmp_path / "t.png"))
    assert x[0, 0].tolist() == [255, 255, 255] and np.abs(x[-1, -1] - BLUE).max() < 10


@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_files_raise_with_path_and_reason(tmp_path: Path, name: str) -> None:
    make, reason = BAD[name]
    path = tmp_path / name
    make(path)
    with pytest.raises(BadImageError, match=re.escape(str(path))) as info:
        load_image(path)
    assert reason in str(info.value) and "data.on_bad_file=skip" in str(info.value)


def test_truncated_jpeg_never_decodes_to_grey() -> None:
    import resnext.data  # noqa: F401  (importing the package must not flip the flag)

    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def _mixed_folder(root: Path) -> list[tuple[str, int]]:
    """Every good and bad kind in one split; labels are their index."""
    root.mkdir(parents=True, exist_ok=True)
    samples = []
    for i, name in enumerate(sorted({**GOOD, **BAD})):
        make = {**GOOD, **BAD}[name][0]
        make(root / name)
        samples.append((str(root / name), i))
    return samples


def test_error_policy_stops_at_the_first_bad_file(tmp_path: Path) -> None:
    ds = ImageFiles(_mixed_folder(tmp_path), "error")
    for i, path in enumerate(ds.paths):
        if Path(path).name in BAD:
            with pytest.raises(BadImageError, match=re.escape(path)):
                ds[i]
        else:
            assert ds[i][0].mode == "RGB" and ds[i][1] == i
    assert bad_file_report(ds).count == 0


def test_skip_policy_replaces_logs_once_and_counts(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ds = ImageFiles(_mixed_folder(tmp_path), "skip")
    names = [Path(p).name for p in ds.paths]
    with caplog.at_level(logging.WARNING, logger="resnext.data"):
        for _epoch in range(2):
            got = [ds[i][1] for i in range(len(ds))]
    # each bad sample is replaced by the next readable one of the split, in index order
    expected = []
    for i in range(len(ds)):
        j = i
        while names[j % len(ds)] in BAD:
            j += 1
        expected.append(j % len(ds))
    assert got == expected
    logged = [r.getMessage() for r in caplog.records]
    assert len(logged) == len(BAD)  # once per file, not once per epoch
    for name in BAD:
        assert sum(name in m for m in logged) == 1
    report = bad_file_report(ds)
    assert report.count == len(BAD)
    assert sorted(Path(p).name for p in report.paths) == sorted(BAD)
    assert "skipped 3 unreadable file(s)" in str(report)
    # a view of part of the split counts only its own files
    first_bad = names.index(sorted(BAD)[0])
    view = TransformedDataset(Subset(ds, [first_bad, expected[first_bad]]), lambda im: im)
    assert bad_file_report(view).paths == [ds.paths[first_bad]]


def test_skip_with_workers_keeps_batches_full_and_counts_across_processes(
    tmp_path: Path,
) -> None:
    write = tmp_path / "data"
    (write / "train").mkdir(parents=True)
    for cls in ("a", "b"):
        folder = write / "train" / cls
        folder.mkdir()
        for k in range(5):
            make_gray_png(folder / f"{k}.png")
    make_truncated_jpeg(write / "train" / "a" / "9.jpg")
    make_text_as_jpeg(write / "train" / "b" / "9.jpg")
    cfg = DataConfig(
        name="imagefolder",
        root=str(write),
        val_dir=None,
        val_fraction=0.0,
        augment="cifar",
        image_size=16,
        on_bad_file="skip",
    )
    runs = []
    for workers in (0, 2):
        splits = build_splits(cfg)
        loader = make_loader(
            splits.train, 4, LoaderOrder(shuffle=True, seed=1), num_workers=workers
        )
        batches = list(loader)
        assert [len(y) for _, y in batches] == [4, 4, 4]  # 12 samples, none dropped
        runs.append(torch.cat([x for x, _ in batches]))
        report = bad_file_report(splits.train)  # flags set inside the worker processes
        assert report.count == 2, workers
        assert {Path(p).name for p in report.paths} == {"9.jpg"}
    assert torch.equal(runs[0], runs[1])  # same samples, same augmentation


def test_error_from_a_worker_is_one_clear_line(tmp_path: Path) -> None:
    samples = [(str(tmp_path / "ok.png"), 0), (str(tmp_path / "bad.jpg"), 0)]
    make_gray_png(tmp_path / "ok.png")
    make_truncated_jpeg(tmp_path / "bad.jpg")
    cfg = DataConfig(augment="none", image_size=8)
    from resnext.data.transforms import train_transform

    ds = TransformedDataset(
        ImageFiles(samples, "error"), train_transform("none", 8, (0.5,) * 3, (0.5,) * 3)
    )
    loader = make_loader(ds, 2, num_workers=1)
    with pytest.raises(BadImageError) as info:
        next(iter(loader))
    message = str(info.value)
    assert "Traceback" not in message and "\n" not in message
    assert str(tmp_path / "bad.jpg") in message and "truncated" in message
    assert "worker process 0" in message
    assert cfg.on_bad_file == "error"  # the default policy


def test_a_file_deleted_after_the_scan_is_a_bad_file(tmp_path: Path) -> None:
    with pytest.raises(BadImageError, match="no such file") as info:
        load_image(tmp_path / "gone.jpg")
    assert info.value.path == str(tmp_path / "gone.jpg")
