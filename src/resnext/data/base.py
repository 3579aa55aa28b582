"""What every dataset reader returns, and the seeded sampling that keeps resume exact.

A reader gives *raw* samples (a PIL image or a uint8 CHW tensor, and an int label).
:class:`TransformedDataset` applies a transform under a private RNG seeded per sample
and per epoch, so augmentation depends only on (seed, epoch, index): the same with 0
or 8 workers, and the same after a resume in the middle of an epoch.
"""

from __future__ import annotations

import atexit
import functools
import multiprocessing
import signal
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Sampler


@dataclass
class Splits:
    """The splits of one dataset, with what evaluation and prediction need to know."""

    train: Dataset
    val: Dataset | None
    test: Dataset | None
    classes: list[str]
    mean: tuple[float, ...]  # per-channel normalisation, in [0, 1] units
    std: tuple[float, ...]
    info: dict[str, Any] = field(default_factory=dict)  # e.g. where val came from
    preprocess: Any = None  # the Preprocess record of val/test (set by build_splits)

    @property
    def num_classes(self) -> int:
        return len(self.classes)


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A 63-bit seed unique to (run seed, epoch, sample index)."""
    return (seed * 1_000_003 + epoch * 7_919 + index * 104_729 + 0x5EED) % (2**63 - 1)


@dataclass(frozen=True)
class LoaderOrder:
    """Which samples a loader gives this process, in which order, and how each is seeded:
    a function of these fields (and the dataset) alone, which is what makes a resume exact.

    ``make_loader``, the samplers and the shard streams take it whole."""

    shuffle: bool = False  # a permutation seeded by (seed, epoch); else the dataset's order
    seed: int = 0  # the run's seed: the permutation and every sample's augmentation
    epoch: int = 0  # the pass: another epoch, another permutation and augmentation
    start: int = 0  # samples of this process's epoch already served (a mid-epoch resume)
    rank: int = 0  # this process, of world_size (DDP)
    world_size: int = 1
    # True: repeat a few samples so every process takes the same steps (training);
    # False: every sample goes to exactly one process (exact evaluation)
    pad: bool = True

    def at(self, epoch: int, start: int = 0) -> LoaderOrder:
        """The same order, serving epoch ``epoch`` from its sample ``start``."""
        return replace(self, epoch=epoch, start=start)


class SeededSampler(Sampler[tuple[int, int]]):
    """Yields ``(index, sample_seed)``; the order is a permutation seeded by (seed, epoch).

    ``start`` skips the first samples of the epoch (resume in the middle of an epoch)
    without touching any random state. Under DDP each rank takes every ``world_size``-th
    sample; ``pad`` repeats a few so that every rank takes the same number of steps
    (training), ``pad=False`` gives each sample to exactly one rank (exact evaluation).
    """

    def __init__(self, n: int, order: LoaderOrder) -> None:
        self.n, self.order = n, order

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Serve epoch ``epoch`` from sample ``start`` on the next iteration (loader reuse)."""
        self.order = self.order.at(epoch, start)

    def indices(self) -> list[int]:
        o = self.order
        if o.shuffle:
            g = torch.Generator().manual_seed(o.seed * 10_007 + o.epoch)
            order = torch.randperm(self.n, generator=g).tolist()
        else:
            order = list(range(self.n))
        if o.world_size > 1 and o.pad and order:
            # Pad to a multiple of the world size so every rank takes the same steps, repeating
            # the order as often as needed (as DistributedSampler does): once is not enough
            # for a dataset smaller than half the world.
            total = -(-len(order) // o.world_size) * o.world_size
            order = (order * -(-total // len(order)))[o.rank : total : o.world_size]
        elif o.world_size > 1:
            order = order[o.rank :: o.world_size]
        return order

    def __iter__(self) -> Iterator[tuple[int, int]]:
        seed, epoch = self.order.seed, self.order.epoch
        for i in self.indices()[self.order.start :]:
            yield i, sample_seed(seed, epoch, i)

    def __len__(self) -> int:
        return max(0, len(self.indices()) - self.order.start)


class TransformedDataset(Dataset):
    """Applies ``transform`` to a reader's samples; index by int or (int, sample_seed).

    Its base is a map-style reader, or a shard split (read in sequence, never by index:
    :attr:`streamed`), which :func:`~resnext.data.make_loader` streams instead."""

    def __init__(self, base: Any, transform: Callable[[Any], torch.Tensor]) -> None:
        self.base = base
        self.transform = transform

    @property
    def streamed(self) -> bool:
        """Whether the split is read in sequence, whole batches at a time (a shard split),
        rather than sample by sample; what every split and loader dataset answers."""
        return bool(getattr(self.base, "streamed", False))

    @property
    def fingerprint(self) -> str | None:
        """The shard pack's fingerprint for a shard split (what a resume checks it reads the
        same pack by); None for map-style readers."""
        return self.base.fingerprint if self.streamed else None

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, int]:
        index, seed = key if isinstance(key, tuple) else (key, index_seed(key))
        image, label = self.base[index]
        return seeded_transform(self.transform, image, seed), label


def seeded_transform(transform: Callable[[Any], Any], image: Any, seed: int) -> Any:
    """``transform(image)`` with torch's CPU RNG seeded by ``seed`` (and put back after), on
    one thread: what a sample gets is a function of its seed alone. The shard reader
    (:mod:`resnext.data.shards`) applies it as :class:`TransformedDataset` does."""
    with torch.random.fork_rng(devices=[]), one_thread():
        # The CPU generator only: torch.manual_seed would also reseed every CUDA
        # device (fork_rng(devices=[]) does not restore those) and costs ~1 ms.
        torch.default_generator.manual_seed(seed)
        return transform(image)


@contextmanager
def one_thread() -> Iterator[None]:
    """Run per-sample transforms (and collation) on one intra-op thread, as workers do.

    Thread pools only add overhead on one image's small ops (30-170x slower measured on
    a busy 2-core machine), and one thread everywhere makes float reductions (e.g. the
    contrast jitter's mean) sum in the same order with 0 or N workers: bitwise the same.
    """
    n = torch.get_num_threads()
    if n == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


class StopSafeLoader(DataLoader):
    """A DataLoader whose worker processes ignore the signals ``workers_ignore`` (a run's
    ``train.stop_signals``); a plain DataLoader for none.

    A scheduler's stop signal often reaches every process of a job, the loader workers too:
    ``scancel`` and ``pkill -f`` signal them all, as a terminal's job control signals its
    process group. torch's workers die on SIGTERM, and the next batch then fails the run
    ("DataLoader worker ... is killed by signal: Terminated") before it can stop cleanly.
    Ignoring it, a worker goes on serving batches until the run stops at its step boundary.
    It still exits when its loader shuts down, when its parent dies (torch's watchdog) and on
    SIGKILL.

    Under the fork start method (Linux's default up to Python 3.13), the signals are blocked
    in the calling thread while the iterator starts its workers, so each worker is born with
    them blocked: one that arrives before the worker's ``worker_init_fn`` has set them to be
    ignored (after torch set its own SIGTERM handler) waits, and is then discarded. The
    parent's handlers still run (another thread takes the signal, or it waits the moment the
    workers take to start). Under spawn and forkserver the mask would not reach the workers
    (multiprocessing's resource tracker unblocks SIGTERM; the fork server forks them), and a
    fork server started in that moment would keep the signals blocked for good, so nothing
    is blocked there, and that first moment stays open.

    At interpreter exit, torch leaves live workers to multiprocessing, which ends its daemonic
    children with SIGTERM and then waits for them: :func:`_kill_loader_workers`, run before
    that, ends these with SIGKILL (an exception that escapes with a loader still live would
    otherwise leave the process waiting forever).
    """

    def __init__(self, *args: Any, workers_ignore: Sequence[str] = (), **kwargs: Any) -> None:
        self.workers_ignore = tuple(signal.Signals[name] for name in workers_ignore)
        if self.workers_ignore:
            if kwargs.get("worker_init_fn") is not None:
                raise TypeError("StopSafeLoader sets worker_init_fn itself")
            global _exit_hook
            if not _exit_hook:
                atexit.register(_kill_loader_workers)  # before multiprocessing's (registered first)
                _exit_hook = True
            kwargs["worker_init_fn"] = functools.partial(_ignore_signals, self.workers_ignore)
        super().__init__(*args, **kwargs)

    def __iter__(self) -> Any:
        starts_workers = self.num_workers > 0 and not (
            self.persistent_workers and getattr(self, "_iterator", None) is not None
        )
        if not (
            starts_workers
            and self.workers_ignore
            and hasattr(signal, "pthread_sigmask")
            and (self.multiprocessing_context or torch.multiprocessing).get_start_method() == "fork"
        ):
            return super().__iter__()
        old = signal.pthread_sigmask(signal.SIG_BLOCK, self.workers_ignore)
        try:  # workers started here inherit the mask; this process gets what came meanwhile
            return super().__iter__()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, old)


_exit_hook = False


def _ignore_signals(signals: tuple[signal.Signals, ...], worker_id: int) -> None:
    # Runs in the worker after torch has set its own handlers (SIGTERM among them). A signal
    # that came before is pending (blocked since birth), and ignoring it discards it.
    for sig in signals:
        signal.signal(sig, signal.SIG_IGN)
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, signals)


def _kill_loader_workers() -> None:
    """At interpreter exit: SIGKILL the daemonic children that ignore SIGTERM (the loader
    workers above), which multiprocessing's SIGTERM would not end. Every daemonic child is
    ended at exit anyway; the others are left to multiprocessing."""
    if threading.current_thread() is threading.main_thread():
        # torch's SIGCHLD handler would report each worker's end as an error of its own
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    for child in multiprocessing.active_children():
        if child.daemon and child.pid is not None and _ignores_sigterm(child.pid):
            child.kill()


def _ignores_sigterm(pid: int) -> bool:
    """Whether process ``pid`` ignores SIGTERM (Linux: its SigIgn mask); True where that
    cannot be read."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return True
    for line in status.splitlines():
        if line.startswith("SigIgn:"):
            return bool(int(line.split()[1], 16) >> (signal.SIGTERM - 1) & 1)
    return True


def index_seed(index: int) -> int:
    return sample_seed(0, 0, index)


class TensorImages(Dataset):
    """In-memory uint8 images ``(N, C, H, W)`` and int labels (digits, CIFAR, MNIST)."""

    def __init__(self, images: torch.Tensor, labels: Sequence[int]) -> None:
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise ValueError(
                f"images must be uint8 (N, C, H, W), got {images.dtype} {tuple(images.shape)}"
            )
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        self.images = images
        self.labels = [int(v) for v in labels]

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.images[index], self.labels[index]


class Subset(Dataset):
    """A fixed subset of a reader (a carved validation split, say)."""

    def __init__(self, base: Dataset, indices: Sequence[int]) -> None:
        self.base = base
        self.indices = list(indices)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> Any:
        return self.base[self.indices[index]]

    @property
    def labels(self) -> list[int]:
        base_labels = getattr(self.base, "labels", None)
        if base_labels is None:
            return [self.base[i][1] for i in self.indices]
        return [base_labels[i] for i in self.indices]
