"""Reading a pack's shards: each tar's samples checked as read, a shuffle buffer, and the
streams of whole batches a :class:`~torch.utils.data.DataLoader` serves (the order is
planned in :mod:`resnext.data.shards.plan`)."""

from __future__ import annotations

import io
import logging
import math
import random
import tarfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
from PIL import Image
from torch.utils.data import DataLoader, IterableDataset, default_collate, get_worker_info

from ...errors import ResnextError
from ..base import (
    LoaderOrder,
    StopSafeLoader,
    TransformedDataset,
    one_thread,
    sample_seed,
    seeded_transform,
)
from ..images import BadImageError, load_image
from .index import KEY_DIGITS, LABEL_EXT, Shard, ShardError, import_webdataset
from .plan import ShardSplit, StreamPlan, plan_epoch

log = logging.getLogger("resnext.data")


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

    streamed = True  # what the loader code asks of every loader dataset

    def __init__(
        self,
        split: ShardSplit,
        transform: Callable[[Any], Any],
        batch_size: int,
        order: LoaderOrder,
        num_workers: int,
    ) -> None:
        self.split, self.transform, self.batch_size = split, transform, batch_size
        self.order, self.streams = order, max(1, num_workers)
        self.shuffle, self.pad, self.seed = order.shuffle, order.pad, order.seed
        self._when = torch.zeros(2, dtype=torch.int64).share_memory_()  # epoch, start
        self.set_epoch(order.epoch, order.start)

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Serve epoch ``epoch`` from its sample ``start`` (a whole number of batches; training
        streams only) on the next pass."""
        if start and (not self.pad or start % self.batch_size):
            raise ValueError(
                f"a shard stream resumes at a whole batch of a training pass, not sample {start}"
            )
        self._when[0], self._when[1] = epoch, start

    def plans(self, epoch: int) -> list[StreamPlan]:
        counts = [s.count for s in self.split.shards]
        return plan_epoch(counts, self.batch_size, self.order.at(epoch), self.streams)

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
        return random.Random(f"resnext-buffer:{self.seed}:{epoch}:{self.order.rank}:{stream}")

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


def check_train_streams(dataset: Any, world_size: int, num_workers: int) -> None:
    """Refuse to train from a shard split with fewer shards than the job has streams (one per
    process and loader worker, each reading its own shards); other datasets pass."""
    if getattr(dataset, "streamed", False):
        dataset.base.check_streams(world_size, num_workers)


def shard_loader(
    dataset: TransformedDataset,
    batch_size: int,
    order: LoaderOrder,
    *,
    num_workers: int,
    pin_memory: bool,
    persistent_workers: bool,
    workers_ignore: Sequence[str] = (),
) -> DataLoader:
    """A DataLoader of whole batches streamed from a transformed shard split (arguments as
    :func:`~resnext.data.make_loader`'s); :func:`~resnext.data.set_loader_epoch` re-seeds it.

    ``shuffle`` with ``pad`` (training) deals the samples so that every process gets the
    same batches; anything else reads every sample exactly once (evaluation)."""
    split = dataset.base
    if not dataset.streamed:
        raise TypeError(f"expected a transformed shard split, got {type(split).__name__}")
    order = replace(order, pad=order.pad and order.shuffle)
    if order.pad:
        split.check_streams(order.world_size, num_workers)
    stream = ShardStream(split, dataset.transform, batch_size, order, num_workers)
    return StopSafeLoader(
        stream,
        batch_size=None,  # the stream yields whole batches
        num_workers=num_workers,
        pin_memory=pin_memory,
        persistent_workers=persistent_workers and num_workers > 0,
        generator=torch.Generator().manual_seed(order.seed),
        workers_ignore=workers_ignore,
    )
