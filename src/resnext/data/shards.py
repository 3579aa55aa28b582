"""WebDataset shards: the format ``resnext pack`` writes and ``data.name=webdataset`` reads.

A pack is a folder (``data.root``)::

    index.json          format and version, classes, mean/std, the source (reader and its
                        data config), and per split: the image count, the count of each
                        class, its order (the train split's packing seed), and each shard's
                        file, sample count, size in bytes and SHA-256
    train-000000.tar    WebDataset tar shards: per sample ``<key>.<ext>``, the image (the
    train-000001.tar    source file's own bytes, or PNG for in-memory datasets such as
    val-000000.tar      digits, MNIST or CIFAR) and ``<key>.cls``, the label as decimal
    ...                 text; ``<key>`` is the sample's index in the source split (8 digits)

Reading (:func:`shard_loader`, which :func:`~resnext.data.make_loader` calls for a shard
split), in epoch ``e`` of a run seeded ``s``:

- Training (``shuffle`` and ``pad``, as the trainer asks): the shards, permuted with
  (s, e), are dealt one by one to the job's *streams*, one per (process, loader worker),
  each to the stream holding the fewest samples so far. Every process takes
  ``ceil(N / processes)`` samples in ``ceil(that / batch)`` batches, as the map-style
  loaders do (so every process runs the same number of steps, and only the last batch may
  be short); batch ``j`` of a process comes from its stream ``j mod workers``. A stream
  reads its shards through a shuffle buffer (``data.shuffle_buffer`` samples) and stops
  when it has made its batches; one whose shards hold fewer samples than that reads them
  again. So within one epoch a few samples per stream (at most about one shard) can be read
  twice or not at all; the next epoch deals the shards differently. Training needs at
  least as many shards as streams (an error says so).
- Otherwise (evaluation: no shuffle, or no padding): shard ``i`` goes to process
  ``i mod processes``, and there to worker ``(i // processes) mod workers``; each stream
  reads its shards in order and every sample exactly once. One process without workers
  reads a split in its packed order (the source reader's order for val and test).

The order depends on (seed, epoch, processes, workers, shuffle buffer, the pack) and on
nothing else; augmentation is seeded per (seed, epoch, sample key) exactly as the
map-style readers seed it per (seed, epoch, index). A resume in the middle of an epoch
replays the epoch's streams up to where the run stopped, reading the samples already
trained without decoding them: exact as well, at the cost of that reading.
"""

from __future__ import annotations

import hashlib
import heapq
import io
import json
import logging
import math
import random
import tarfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, IterableDataset, default_collate, get_worker_info

from ..config import DataConfig
from ..errors import DataError, ResnextError
from .base import Splits, TransformedDataset, one_thread, sample_seed, seeded_transform
from .images import BadImageError, load_image

log = logging.getLogger("resnext.data")

FORMAT = "resnext-webdataset"  # index.json's "format"
VERSION = 1  # index.json's "version": what this reader reads
INDEX_FILE = "index.json"
SPLITS = ("train", "val", "test")
KEY_DIGITS = 8  # sample keys: the index in the source split, zero-padded
LABEL_EXT = "cls"  # the WebDataset convention for an integer class label


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


# -- the index ----------------------------------------------------------------------------
@dataclass(frozen=True)
class Shard:
    """One tar file of a split, as the index records it."""

    path: Path
    count: int  # samples
    bytes: int  # file size
    sha256: str | None = None  # of the file's bytes, as written (packs before it: None)


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


_HEX = set("0123456789abcdef")


class ShardSplit(Dataset):
    """One split of a pack: its shards, in packed order, and what reading them needs.

    It has a length but no random access: :func:`~resnext.data.make_loader` reads it
    through :func:`shard_loader` (a stream of whole batches)."""

    def __init__(
        self,
        root: Path,
        name: str,
        shards: Sequence[Shard],
        num_classes: int,
        on_bad_file: str = "error",
        shuffle_buffer: int = 1000,
        order: str | None = None,
    ) -> None:
        self.root, self.name, self.shards, self.order = root, name, list(shards), order
        self.num_classes, self.on_bad_file, self.shuffle_buffer = (
            num_classes,
            on_bad_file,
            shuffle_buffer,
        )
        self.count = sum(s.count for s in self.shards)
        # Where each shard's samples start in _bad, which holds the key of each sample found
        # unreadable under data.on_bad_file=skip (-1: not found so). In shared memory, as
        # ImageFiles' flags are, so a loader worker's finding reaches the trainer's report.
        self._starts: dict[str, int] = {}
        start = 0
        for s in self.shards:
            self._starts[s.path.name] = start
            start += s.count
        self._bad = torch.full((self.count,), -1, dtype=torch.int32).share_memory_()  # keys < 1e8

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int) -> Any:
        raise DataError(
            f"the {self.name} split of {self.root} is WebDataset shards, read in sequence: it "
            "has no random access; read it with resnext.data.make_loader"
        )

    @property
    def fingerprint(self) -> str:
        """A short hash of the shards' contents (their SHA-256, counts and names) and the
        split's recorded order: another pack of the same images (other shard sizes, another
        packing seed) has another fingerprint.

        Packs written before the index recorded each shard's SHA-256 are fingerprinted as
        they were then, by names, counts and sizes only (so their runs still resume): there
        a re-pack with another seed can share the fingerprint."""
        if any(s.sha256 is None for s in self.shards):
            listing: Any = [(s.path.name, s.count, s.bytes) for s in self.shards]
        else:
            shards = [(s.path.name, s.count, s.bytes, s.sha256) for s in self.shards]
            listing = {"order": self.order, "shards": shards}
        return hashlib.sha256(json.dumps(listing).encode()).hexdigest()[:16]

    def mark_bad(self, sample: RawSample) -> bool:
        """Record an unreadable sample (skip policy); True the first time it is found."""
        slot = self._starts[sample.shard] + sample.position
        if int(self._bad[slot]) >= 0:
            return False
        self._bad[slot] = sample.index
        return True

    def bad_paths(self) -> list[str]:
        """The samples found unreadable so far (skip policy), in packed order, each as its
        key in its shard (what :func:`~resnext.data.bad_file_report` counts)."""
        found = torch.nonzero(self._bad >= 0).flatten().tolist()
        out = []
        for s in self.shards:
            start = self._starts[s.path.name]
            out.extend(
                f"{s.path} sample {int(self._bad[i]):0{KEY_DIGITS}d}"
                for i in found
                if start <= i < start + s.count
            )
        return out

    def check_files(self) -> None:
        """Every shard exists with the size the index records (a cheap check for a missing,
        truncated or replaced file)."""
        for s in self.shards:
            if not s.path.is_file():
                raise ShardError(
                    f"shard {s.path} is missing (index.json lists {len(self.shards)} {self.name} "
                    "shards); copy the whole pack folder again or run resnext pack again"
                )
            size = s.path.stat().st_size
            if size != s.bytes:
                raise ShardError(
                    f"shard {s.path} has {size} bytes but index.json records {s.bytes}: it is "
                    "truncated or from another pack; copy it again or run resnext pack again"
                )


def webdataset_splits(cfg: DataConfig) -> Splits:
    """The splits of the pack at ``data.root`` (the reader of ``data.name=webdataset``).

    The pack fixes the splits: ``data.val_fraction``, ``test_fraction`` and ``split_seed``
    were applied when it was packed (recorded in its index) and are not read here."""
    import_webdataset()  # fail now, with the install hint, not in a loader worker
    index = read_index(cfg.root)
    root = Path(cfg.root).expanduser()  # type: ignore[arg-type]
    classes = list(index["classes"])
    parts: dict[str, ShardSplit] = {}
    for name, entry in index["splits"].items():
        shards = [
            Shard(root / s["file"], int(s["count"]), int(s["bytes"]), s.get("sha256"))
            for s in entry["shards"]
        ]
        part = ShardSplit(
            root,
            name,
            shards,
            len(classes),
            cfg.on_bad_file,
            cfg.shuffle_buffer,
            order=str(entry.get("order")) if entry.get("order") is not None else None,
        )
        part.check_files()
        parts[name] = part
    source = index.get("source") or {}
    info = {
        "source": str(root),
        "packed_from": source.get("name"),
        "val": (source.get("info") or {}).get("val", "packed"),
        "shards": {name: len(p.shards) for name, p in parts.items()},
    }
    # A pack without a train split is still evaluated; training refuses its empty train split.
    train = parts.get("train") or ShardSplit(root, "train", [], len(classes))
    return Splits(
        train,
        parts.get("val"),
        parts.get("test"),
        classes,
        tuple(float(v) for v in index["mean"]),
        tuple(float(v) for v in index["std"]),
        info,
    )


# -- the plan of an epoch -----------------------------------------------------------------
@dataclass(frozen=True)
class StreamPlan:
    """What one stream (a process's loader worker) reads in an epoch and the batches it makes."""

    shards: tuple[int, ...]  # shard indices, in reading order
    batch_ids: tuple[int, ...]  # the process's batch numbers this stream makes (training)
    batch_sizes: tuple[int, ...]  # their sizes (training); empty = batch as read (evaluation)


def shard_order(num_shards: int, seed: int, epoch: int, shuffle: bool) -> list[int]:
    """The epoch's shard order: a permutation seeded by (seed, epoch), or packed order."""
    order = list(range(num_shards))
    if shuffle:
        random.Random(f"resnext-shards:{seed}:{epoch}").shuffle(order)
    return order


def plan_epoch(
    counts: Sequence[int],
    batch_size: int,
    *,
    rank: int,
    world_size: int,
    workers: int,
    seed: int,
    epoch: int,
    shuffle: bool,
    pad: bool,
) -> list[StreamPlan]:
    """The ``workers`` stream plans of process ``rank`` (see the module docstring).

    Args:
        counts: samples of each shard of the split, in packed order.
        workers: streams per process, ``max(1, num_workers)``.
        pad: training (every process the same batches, samples dealt by quota) or
            evaluation (every sample exactly once).
    """
    order = shard_order(len(counts), seed, epoch, shuffle)
    if not pad:
        mine = [i for n, i in enumerate(order) if n % world_size == rank]
        return [StreamPlan(tuple(mine[w::workers]), (), ()) for w in range(workers)]
    streams = world_size * workers
    if len(counts) < streams:
        raise ShardError(
            f"{len(counts)} shard(s) cannot feed {world_size} process(es) x {workers} "
            f"loader stream(s): training needs at least {streams}"
        )
    dealt: list[list[int]] = [[] for _ in range(streams)]
    loads = [(0, k) for k in range(streams)]  # (samples so far, stream): the least loaded first
    for i in order:
        load, k = heapq.heappop(loads)
        dealt[k].append(i)
        heapq.heappush(loads, (load + counts[i], k))
    per_rank = math.ceil(sum(counts) / world_size)
    n_batches = math.ceil(per_rank / batch_size)
    sizes = [batch_size] * n_batches
    if n_batches:
        sizes[-1] = per_rank - (n_batches - 1) * batch_size
    plans = []
    for w in range(workers):
        ids = tuple(range(w, n_batches, workers))
        plans.append(
            StreamPlan(tuple(dealt[rank * workers + w]), ids, tuple(sizes[j] for j in ids))
        )
    return plans


# -- reading --------------------------------------------------------------------------------
@dataclass(frozen=True)
class RawSample:
    """A sample as stored: encoded image bytes, not decoded."""

    index: int  # the key: the sample's index in the source split
    ext: str
    data: bytes
    label: int
    shard: str  # file name, for messages
    position: int = 0  # the sample's place in its shard


def decode_image(data: bytes, where: str) -> Image.Image:
    """Encoded bytes -> upright RGB PIL image (as :func:`~resnext.data.load_image` reads a
    file), or :class:`BadImageError` naming ``where``."""
    try:
        return load_image(io.BytesIO(data))
    except BadImageError as e:
        raise BadImageError(
            f"cannot read image {where}: {e.reason}; pack the dataset again (resnext pack "
            "checks every image) or set data.on_bad_file=skip",
            where,
            e.reason,
        ) from None


def read_shard(shard: Shard, num_classes: int) -> Iterator[RawSample]:
    """The samples of one shard in stored order; checks each and the count the index records."""
    wds = import_webdataset()
    n = 0
    try:
        with open(shard.path, "rb") as f:
            files = wds.tariterators.tar_file_expander([{"url": str(shard.path), "stream": f}])
            for sample in wds.tariterators.group_by_keys(files):
                yield _parse(sample, shard, num_classes, n)
                n += 1
    except ResnextError:
        raise
    except (OSError, tarfile.TarError, ValueError) as e:
        reason = str(e.args[0]) if e.args else type(e).__name__
        raise ShardError(
            f"shard {shard.path} cannot be read ({reason}): it is damaged or truncated; copy it "
            "again or run resnext pack again"
        ) from None
    if n != shard.count:
        raise ShardError(
            f"shard {shard.path} holds {n} samples but index.json says {shard.count}: the "
            "index belongs to another pack, or the shard was replaced; run resnext pack again"
        )


def _parse(sample: dict[str, Any], shard: Shard, num_classes: int, position: int) -> RawSample:
    key = sample["__key__"]
    images = [k for k in sample if not k.startswith("__") and k != LABEL_EXT]
    if LABEL_EXT not in sample or len(images) != 1 or not key.isdigit():
        members = sorted(k for k in sample if not k.startswith("__"))
        raise ShardError(
            f"sample {key!r} of shard {shard.path} holds {members}: a pack sample is one image "
            f"and a .{LABEL_EXT} label under a numeric key; this is not a resnext pack shard"
        )
    try:
        label = int(sample[LABEL_EXT])
    except ValueError:
        label = -1
    if not 0 <= label < num_classes:
        raise ShardError(
            f"sample {key} of shard {shard.path} has label {sample[LABEL_EXT]!r}, not a class "
            f"index in 0..{num_classes - 1}: the shard and index.json do not match"
        )
    return RawSample(int(key), images[0], sample[images[0]], label, shard.path.name, position)


def _shuffled(samples: Iterator[RawSample], size: int, rng: random.Random) -> Iterator[RawSample]:
    """A shuffle buffer: hold ``size`` samples, give out a random one as each new one arrives."""
    if size <= 1:
        yield from samples
        return
    buffer: list[RawSample] = []
    for s in samples:
        if len(buffer) < size:
            buffer.append(s)
            continue
        j = rng.randrange(size)
        out, buffer[j] = buffer[j], s
        yield out
    rng.shuffle(buffer)
    yield from buffer


class ShardStream(IterableDataset):
    """Whole batches of one process's share of a shard split, epoch by epoch.

    :meth:`set_epoch` (called in the main process before each pass) reaches persistent
    workers through shared memory, as the map-style sampler's epoch reaches them.
    """

    def __init__(
        self,
        split: ShardSplit,
        transform: Callable[[Any], Any],
        batch_size: int,
        *,
        shuffle: bool,
        pad: bool,
        seed: int,
        rank: int,
        world_size: int,
        num_workers: int,
        epoch: int = 0,
        start: int = 0,
    ) -> None:
        self.split, self.transform, self.batch_size = split, transform, batch_size
        self.shuffle, self.pad, self.seed = shuffle, pad, seed
        self.rank, self.world_size = rank, world_size
        self.num_workers, self.streams = num_workers, max(1, num_workers)
        self._when = torch.zeros(2, dtype=torch.int64).share_memory_()  # epoch, start
        self.set_epoch(epoch, start)

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Serve epoch ``epoch`` from its sample ``start`` (a whole number of batches; training
        streams only) on the next pass."""
        if start and (not self.pad or start % self.batch_size):
            raise ValueError(
                f"a shard stream resumes at a whole batch of a training pass, not sample {start}"
            )
        self._when[0], self._when[1] = epoch, start

    def plans(self, epoch: int) -> list[StreamPlan]:
        return plan_epoch(
            [s.count for s in self.split.shards],
            self.batch_size,
            rank=self.rank,
            world_size=self.world_size,
            workers=self.streams,
            seed=self.seed,
            epoch=epoch,
            shuffle=self.shuffle,
            pad=self.pad,
        )

    def __len__(self) -> int:
        """Batches this process gets in the coming pass."""
        epoch, start = self._when.tolist()
        plans = self.plans(epoch)
        if self.pad:
            return sum(len(p.batch_ids) for p in plans) - start // self.batch_size
        counts = [s.count for s in self.split.shards]
        return sum(math.ceil(sum(counts[i] for i in p.shards) / self.batch_size) for p in plans)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        info = get_worker_info()
        worker = 0 if info is None else info.id
        epoch, start = self._when.tolist()
        plans = self.plans(epoch)
        if not self.pad:
            yield from self._once(plans[worker], epoch, worker)
            return
        # The loader asks worker w for the pass's batches w, w + W, ...; after a resume at
        # batch `first` those are the process's batches first + w, ..., which stream
        # (first + w) mod W makes.
        first = start // self.batch_size
        stream = (first + worker) % self.streams
        yield from self._quota(plans[stream], epoch, stream, first)

    def _rng(self, epoch: int, stream: int) -> random.Random:
        return random.Random(f"resnext-buffer:{self.seed}:{epoch}:{self.rank}:{stream}")

    def _read(self, shard_ids: Sequence[int]) -> Iterator[RawSample]:
        for i in shard_ids:
            yield from read_shard(self.split.shards[i], self.split.num_classes)

    def _passes(
        self, shard_ids: Sequence[int], buffer: int, rng: random.Random
    ) -> Iterator[RawSample]:
        """The shards read again and again, each pass through its own shuffle buffer,
        drained at the pass's end: every pass gives each of its samples exactly once."""
        while shard_ids:
            yield from _shuffled(self._read(shard_ids), buffer, rng)

    def _quota(
        self, plan: StreamPlan, epoch: int, stream: int, first: int
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Training: the plan's batches, read through the shuffle buffer; batches before
        ``first`` (already trained) are read but not decoded."""
        buffer = self.split.shuffle_buffer if self.shuffle else 0
        samples = self._passes(plan.shards, buffer, self._rng(epoch, stream))
        for j, size in zip(plan.batch_ids, plan.batch_sizes, strict=True):
            raw = [next(samples) for _ in range(size)]
            if j >= first:
                yield self._batch(raw, epoch)

    def _once(
        self, plan: StreamPlan, epoch: int, worker: int
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Evaluation: every sample of the plan's shards once, in batches."""
        buffer = self.split.shuffle_buffer if self.shuffle else 0
        samples = _shuffled(self._read(plan.shards), buffer, self._rng(epoch, worker))
        raw: list[RawSample] = []
        for s in samples:
            raw.append(s)
            if len(raw) == self.batch_size:
                yield self._batch(raw, epoch)
                raw = []
        if raw:
            yield self._batch(raw, epoch)

    def _batch(self, raw: list[RawSample], epoch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Decode, transform (seeded per sample) and collate. Under ``data.on_bad_file=skip``
        an unreadable image is replaced by another sample of the same batch, so the stream
        (and a resume's replay of it) does not shift."""
        out: list[tuple[Any, int] | None] = []
        for r in raw:
            where = f"{r.index:0{KEY_DIGITS}d}.{r.ext} in shard {self.split.root / r.shard}"
            try:
                image = decode_image(r.data, where)
            except BadImageError as e:
                if self.split.on_bad_file == "error":
                    raise
                if self.split.mark_bad(r):  # logged once; the trainer's epoch line counts it
                    log.warning("skipping unreadable image %s: %s", e.path, e.reason)
                out.append(None)
                continue
            seed = sample_seed(self.seed, epoch, r.index)
            out.append((seeded_transform(self.transform, image, seed), r.label))
        good = [o for o in out if o is not None]
        if not good:
            raise BadImageError(f"every image of a batch from {self.split.root} is unreadable")
        filled = [o if o is not None else good[i % len(good)] for i, o in enumerate(out)]
        with one_thread():
            return default_collate(filled)


def shard_split_of(dataset: Any) -> ShardSplit | None:
    """The shard split under a transformed dataset, if it is one."""
    if isinstance(dataset, TransformedDataset) and isinstance(dataset.base, ShardSplit):
        return dataset.base
    return None


def check_train_streams(dataset: Any, world_size: int, num_workers: int) -> None:
    """Refuse to train from a shard split with fewer shards than the job has streams (one per
    process and loader worker, each reading its own shards); other datasets pass."""
    split = shard_split_of(dataset)
    streams = world_size * max(1, num_workers)
    if split is not None and len(split.shards) < streams:
        raise ShardError(
            f"the {split.name} split of {split.root} has {len(split.shards)} shard(s), but "
            f"training reads it with {world_size} process(es) x {max(1, num_workers)} loader "
            f"stream(s) (data.num_workers={num_workers}), each of which needs its own shards: "
            f"pack it into at least {streams} shards (resnext pack --shard-size or "
            "--shard-samples), or lower data.num_workers"
        )


def shard_loader(
    dataset: TransformedDataset,
    batch_size: int,
    *,
    shuffle: bool,
    seed: int,
    epoch: int,
    start: int,
    num_workers: int,
    pin_memory: bool,
    persistent_workers: bool,
    rank: int,
    world_size: int,
    pad: bool,
) -> DataLoader:
    """A DataLoader of whole batches streamed from a shard split (arguments as
    :func:`~resnext.data.make_loader`'s); :func:`~resnext.data.set_loader_epoch` re-seeds it.

    ``shuffle`` with ``pad`` (training) deals the samples so that every process gets the
    same batches; anything else reads every sample exactly once (evaluation)."""
    split = dataset.base
    if not isinstance(split, ShardSplit):
        raise TypeError(f"expected a transformed shard split, got {type(split).__name__}")
    pad = pad and shuffle
    if pad:
        check_train_streams(dataset, world_size, num_workers)
    stream = ShardStream(
        split,
        dataset.transform,
        batch_size,
        shuffle=shuffle,
        pad=pad,
        seed=seed,
        rank=rank,
        world_size=world_size,
        num_workers=num_workers,
        epoch=epoch,
        start=start,
    )
    return DataLoader(
        stream,
        batch_size=None,  # the stream yields whole batches
        num_workers=num_workers,
        pin_memory=pin_memory,
        persistent_workers=persistent_workers and num_workers > 0,
        generator=torch.Generator().manual_seed(seed),
    )
