"""Reading an image folder vs the same images packed into WebDataset shards, on this machine.

Writes N JPEGs of 500x375 (ImageNet's typical size; the synthetic scenes of
:func:`resnext.benchmarking.write_jpegs`) to an image folder under ``--dir`` (default: a temporary
folder on the disk of the system's temp dir), packs them with ``resnext pack``'s code, then
times one epoch of the ImageNet train pipeline (decode, random-resized crop to 224, flip,
colour jitter, PCA lighting, normalise; batches of 32) from each, with 0..N loader workers:

- cold: the files' pages are evicted from the page cache first with
  ``posix_fadvise(POSIX_FADV_DONTNEED)`` on every image or shard file (no root needed, and
  other processes' cache is left alone; ``/proc/sys/vm/drop_caches`` is not used), and the
  share still cached afterwards is measured with ``fincore`` where util-linux has it; the
  pass includes starting the loader's workers;
- warm: the next pass over the same loader (workers kept), with the files cached.

A first pair of rows reads the bytes only (no decoding, one process): the image files in a
shuffled order, as the map-style sampler asks for them, and the shards front to back, as
their streams read them. That is the storage's part; the pipeline rows add decoding and
augmentation, which on a few CPU cores cost far more.

Run: ``python benchmarks/shards.py`` (``--help`` for sizes); ``--folder DIR`` reads your own
``DIR/train/<class>/*.jpg`` tree instead of writing one.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import torch

from resnext.benchmarking import cpu_name, imagenet_train_config, write_jpegs
from resnext.config import DataConfig
from resnext.data import LoaderOrder, build_splits, make_loader, set_loader_epoch
from resnext.data.pack import pack_dataset, parse_size
from resnext.data.shards import Shard, import_webdataset, read_index, read_shard
from resnext.table import format_table


def evict(files: list[Path]) -> float | None:
    """Drop ``files`` from the page cache; returns the share still cached (0..1) if known."""
    for path in files:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)  # pages not yet written back (a fresh file) cannot be dropped
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
    return cached_share(files)


def cached_share(files: list[Path]) -> float | None:
    """Bytes of ``files`` in the page cache / their size, from util-linux ``fincore``."""
    if shutil.which("fincore") is None:
        return None
    cached = total = 0
    for i in range(0, len(files), 500):  # bounded command lines
        batch = [str(p) for p in files[i : i + 500]]
        out = subprocess.run(
            ["fincore", "--bytes", "--noheadings", "--output", "RES,SIZE", *batch],
            capture_output=True,
            text=True,
            check=False,
        ).stdout
        for line in out.splitlines():
            res, size = line.split()[:2]
            cached, total = cached + int(res), total + int(size)
    return min(1.0, cached / total) if total else None  # fincore counts whole pages


def timed_passes(cfg: DataConfig, files: list[Path], batch: int) -> tuple[float, float, float]:
    """(cold images/s, share cached before the cold pass, warm images/s) of the train split."""
    train = build_splits(cfg).train
    share = evict(files)
    loader = make_loader(
        train, batch, LoaderOrder(shuffle=True, seed=0), num_workers=cfg.num_workers
    )
    rates = []
    for epoch in range(2):
        set_loader_epoch(loader, epoch)
        n, start = 0, time.perf_counter()
        for x, _ in loader:
            n += x.shape[0]
        rates.append(n / (time.perf_counter() - start))
    del loader
    return rates[0], share if share is not None else float("nan"), rates[1]


def read_rates(images: list[Path], packed: Path) -> list[tuple[str, float, float, float]]:
    """(what, cold images/s, share cached before the cold pass, warm images/s) of reading
    the bytes alone, in one process."""
    import_webdataset()  # once, outside the timing
    index = read_index(packed)
    shards = [
        Shard.from_entry(packed, s) for split in index["splits"].values() for s in split["shards"]
    ]
    order = list(images)
    random.Random(0).shuffle(order)

    def files() -> int:
        for p in order:
            p.read_bytes()
        return len(order)

    def tars() -> int:
        n = 0
        for shard in shards:
            for _ in read_shard(shard, len(index["classes"])):
                n += 1
        return n

    out = []
    tar_files = [s.path for s in shards]
    for what, read, paths in (("image files, shuffled", files, images),
                              ("shards, in sequence", tars, tar_files)):  # fmt: skip
        rates, share = [], None
        for cold in (True, False):
            if cold:
                share = evict(paths)
            start = time.perf_counter()
            n = read()
            rates.append(n / (time.perf_counter() - start))
        out.append((what, rates[0], share if share is not None else float("nan"), rates[1]))
    return out


def percent(share: float) -> str:
    """A cached share as the table shows it; unknown (no fincore) is "?"."""
    return "?" if share != share else f"{100 * share:.0f}%"  # NaN: not measured


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000, help="JPEGs to write")
    parser.add_argument("--folder", type=Path, help="an existing root with train/<class>/ images")
    parser.add_argument("--dir", type=Path, help="where to write (default: the temp dir)")
    parser.add_argument("--shard-size", default="32MB", help="shard size of the pack")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        tmp_path = Path(tmp)
        if args.folder is None:
            root = tmp_path / "folder"
            write_jpegs(root, args.images)
        else:
            root = args.folder
        images = sorted(p for p in (root / "train").rglob("*") if p.is_file())
        packed = tmp_path / "packed"
        t0 = time.perf_counter()
        pack_dataset(
            imagenet_train_config(root, "imagefolder", 0),
            packed,
            shard_bytes=parse_size(args.shard_size),
            workers=max(args.workers),
            progress=False,
            say=lambda _: None,
        )
        pack_seconds = time.perf_counter() - t0
        shards = sorted(packed.glob("*.tar"))
        size = sum(p.stat().st_size for p in images) / 1024**2
        shard_size = sum(p.stat().st_size for p in shards) / 1024**2
        rows: list[list[object]] = [
            ["source", "workers", "cold images/s", "cached before", "warm images/s"]
        ]
        for what, cold, share, warm in read_rates(images, packed):
            rows.append([f"read bytes only: {what}", 0, f"{cold:.1f}", percent(share),
                         f"{warm:.1f}"])  # fmt: skip
        sources = [
            (f"image folder ({len(images)} files, {size:.0f} MiB)", "imagefolder", root, images),
            (f"shards ({len(shards)} tar files, {shard_size:.0f} MiB)", "webdataset", packed,
             shards),
        ]  # fmt: skip
        for label, name, where, files in sources:
            for w in args.workers:
                cold, share, warm = timed_passes(
                    imagenet_train_config(where, name, w), files, args.batch_size
                )
                rows.append([label, w, f"{cold:.1f}", percent(share), f"{warm:.1f}"])
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs "
        f"({cpu_name()}); ImageNet train pipeline, batch {args.batch_size}; pack took "
        f"{pack_seconds:.1f} s; cold = posix_fadvise(DONTNEED) on the files"
    )
    print(format_table(rows))


if __name__ == "__main__":
    main()
