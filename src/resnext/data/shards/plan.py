"""A pack's splits, and the plan of an epoch: which shards each stream reads, in which
batches.

Reading (:func:`~resnext.data.shards.shard_loader`, which :func:`~resnext.data.make_loader`
calls for a shard split), in epoch ``e`` of a run seeded ``s``:

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
import json
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ...config import DataConfig
from ...errors import DataError
from ..base import LoaderOrder, Splits
from .index import KEY_DIGITS, Shard, ShardError, import_webdataset, read_index

if TYPE_CHECKING:
    from .stream import RawSample


class ShardSplit:
    """One split of a pack: its shards, in packed order, and what reading them needs.

    It has a length but no random access, so it is no map-style ``Dataset``: it answers
    :attr:`streamed`, and :func:`~resnext.data.make_loader` reads it through
    :func:`~resnext.data.shards.shard_loader` (a stream of whole batches)."""

    streamed = True  # read in sequence, whole batches at a time, never by index

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
        self.num_classes, self.on_bad_file = num_classes, on_bad_file
        self.shuffle_buffer = shuffle_buffer
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
        """No random access: said plainly, for code that indexes every split."""
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

    def check_streams(self, world_size: int, num_workers: int) -> None:
        """Refuse to train with fewer shards than the job has streams (one per process and
        loader worker, each reading its own shards)."""
        streams = world_size * max(1, num_workers)
        if len(self.shards) < streams:
            raise ShardError(
                f"the {self.name} split of {self.root} has {len(self.shards)} shard(s), but "
                f"training reads it with {world_size} process(es) x {max(1, num_workers)} "
                f"loader stream(s) (data.num_workers={num_workers}), each of which needs its "
                f"own shards: pack it into at least {streams} shards (resnext pack "
                "--shard-size or --shard-samples), or lower data.num_workers"
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
        part = ShardSplit(
            root,
            name,
            [Shard.from_entry(root, s) for s in entry["shards"]],
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
        train,  # type: ignore[arg-type]
        parts.get("val"),  # type: ignore[arg-type]
        parts.get("test"),  # type: ignore[arg-type]
        classes,
        tuple(float(v) for v in index["mean"]),
        tuple(float(v) for v in index["std"]),
        info,
    )


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
    counts: Sequence[int], batch_size: int, order: LoaderOrder, workers: int
) -> list[StreamPlan]:
    """The ``workers`` stream plans of process ``order.rank`` in epoch ``order.epoch`` (see
    the module docstring); ``order.start`` is not read (a resume replays the whole plan).

    Args:
        counts: samples of each shard of the split, in packed order.
        order: ``pad``: training (every process the same batches, samples dealt by quota),
            else evaluation (every sample exactly once).
        workers: streams per process, ``max(1, num_workers)``.
    """
    rank, world_size = order.rank, order.world_size
    shards = shard_order(len(counts), order.seed, order.epoch, order.shuffle)
    if not order.pad:
        mine = [i for n, i in enumerate(shards) if n % world_size == rank]
        return [StreamPlan(tuple(mine[w::workers]), (), ()) for w in range(workers)]
    streams = world_size * workers
    if len(counts) < streams:
        raise ShardError(
            f"{len(counts)} shard(s) cannot feed {world_size} process(es) x {workers} "
            f"loader stream(s): training needs at least {streams}"
        )
    dealt: list[list[int]] = [[] for _ in range(streams)]
    loads = [(0, k) for k in range(streams)]  # (samples so far, stream): the least loaded first
    for i in shards:
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
