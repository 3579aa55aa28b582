"""make_loader: the same batches with 0 or N workers, persistent workers, mid-epoch start."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch
from torch.utils.data import Dataset, get_worker_info

from helpers import write_image_tree
from resnext.config import DataConfig
from resnext.data import LoaderOrder, build_splits, make_loader


def _batches(loader) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = zip(*list(loader), strict=True)
    return torch.cat(xs), torch.cat(ys)


def test_imagenet_augmentation_is_bitwise_equal_with_0_or_2_workers(tmp_path: Path) -> None:
    write_image_tree(tmp_path / "train", ["a", "b", "c"], 4)
    cfg = DataConfig(
        name="imagefolder",
        root=str(tmp_path),
        val_dir=None,
        val_fraction=0.0,
        augment="imagenet",
        image_size=24,
    )
    train = build_splits(cfg).train
    x0, y0 = _batches(
        make_loader(train, 5, LoaderOrder(shuffle=True, seed=3, epoch=2), num_workers=0)
    )
    x2, y2 = _batches(
        make_loader(train, 5, LoaderOrder(shuffle=True, seed=3, epoch=2), num_workers=2)
    )
    assert torch.equal(y0, y2) and torch.equal(x0, x2)
    assert torch.get_num_threads() == min(2, os.cpu_count() or 1)  # restored after transforms
    x1, _ = _batches(
        make_loader(train, 5, LoaderOrder(shuffle=True, seed=3, epoch=3), num_workers=0)
    )
    assert not torch.equal(x0, x1)  # another epoch, other crops


class _WhoLoads(Dataset):
    """Returns (index, pid of the process that loaded it) for keys (index, seed)."""

    def __len__(self) -> int:
        return 8

    def __getitem__(self, key: tuple[int, int]) -> tuple[int, int]:
        assert get_worker_info() is not None
        return key[0], os.getpid()


def test_persistent_workers_survive_epochs_and_follow_set_epoch() -> None:
    loader = make_loader(_WhoLoads(), 4, LoaderOrder(shuffle=True, seed=0), num_workers=2)
    assert loader.persistent_workers and loader.pin_memory == torch.cuda.is_available()
    order0, pids0 = _batches(loader)
    loader.sampler.set_epoch(1)
    order1, pids1 = _batches(loader)
    assert set(pids0.tolist()) == set(pids1.tolist())  # the same two worker processes
    assert os.getpid() not in pids0.tolist()
    fresh = make_loader(_WhoLoads(), 4, LoaderOrder(shuffle=True, seed=0, epoch=1), num_workers=2)
    assert torch.equal(order1, _batches(fresh)[0])  # reuse == a new loader for epoch 1
    assert not torch.equal(order0, order1)
    # mid-epoch resume: start=3 serves the rest of the same order
    loader.sampler.set_epoch(1, start=3)
    assert torch.equal(_batches(loader)[0], order1[3:])
    assert not make_loader(_WhoLoads(), 4, num_workers=0).persistent_workers


class _Indices(Dataset):
    """Each sample is its own index, so a loader's output names the samples it served."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, item) -> torch.Tensor:
        index = item[0] if isinstance(item, tuple) else item
        return torch.tensor(index)


def _served(n: int, rank: int, world: int, *, shuffle: bool, pad: bool) -> list[int]:
    order = LoaderOrder(shuffle=shuffle, seed=5, epoch=1, rank=rank, world_size=world, pad=pad)
    loader = make_loader(_Indices(n), 3, order)
    return [int(i) for batch in loader for i in batch]


def test_map_style_shards_over_ranks_partition_the_dataset() -> None:
    """pad=False (exact evaluation): each index goes to exactly one rank. pad=True (training):
    every index is served, every rank takes the same count, and the repeats are exactly
    what padding n up to a multiple of the world size needs."""
    for n in (4, 5, 7, 10, 13):
        for world in (1, 2, 3, 4):
            for shuffle in (False, True):
                exact = [_served(n, r, world, shuffle=shuffle, pad=False) for r in range(world)]
                flat = [i for part in exact for i in part]
                assert sorted(flat) == list(range(n)), (n, world, shuffle)
                assert max(map(len, exact)) - min(map(len, exact)) <= 1

                padded = [_served(n, r, world, shuffle=shuffle, pad=True) for r in range(world)]
                per_rank = -(-n // world)
                assert all(len(part) == per_rank for part in padded), (n, world, shuffle)
                flat = [i for part in padded for i in part]
                assert set(flat) == set(range(n))
                assert len(flat) - n == per_rank * world - n  # the padding, no more
                counts = {i: flat.count(i) for i in set(flat)}
                assert all(1 <= c <= 2 for c in counts.values())
                assert sum(c - 1 for c in counts.values()) == per_rank * world - n


def test_padding_a_dataset_much_smaller_than_the_world_gives_every_rank_a_sample() -> None:
    # Repeating the order once left rank 2 with nothing for n=1 under 3 processes.
    assert all(len(_served(1, r, 3, shuffle=False, pad=True)) == 1 for r in range(3))


_LIVE_LOADER_THEN_A_BUG = """
import torch
from resnext.data import LoaderOrder, make_loader

class Zeros(torch.utils.data.Dataset):
    def __len__(self):
        return 64

    def __getitem__(self, i):
        return torch.zeros(2), 0

loader = make_loader(Zeros(), 4, LoaderOrder(), num_workers=2, workers_ignore=["SIGTERM"])
it = iter(loader)
next(it)
print("workers", *sorted(w.pid for w in it._workers), flush=True)
raise RuntimeError("a bug while the loader is live")
"""


def test_workers_that_ignore_stop_signals_do_not_hold_the_process_at_exit(tmp_path) -> None:
    """An exception that escapes while a loader whose workers ignore SIGTERM is live: the
    process exits at once with the traceback (multiprocessing's SIGTERM-then-wait at exit
    would wait forever on such workers), reports no worker death of its own, and leaves no
    worker behind."""
    script = tmp_path / "bug.py"
    script.write_text(_LIVE_LOADER_THEN_A_BUG)
    run = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60)
    assert run.returncode == 1, run.stderr
    assert run.stderr.rstrip().endswith("RuntimeError: a bug while the loader is live")
    assert "killed by signal" not in run.stderr
    pids = [int(p) for p in run.stdout.split()[1:]]
    assert len(pids) == 2
    for pid in pids:  # gone (reaped by its parent before it exited), not running on
        assert (
            not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text()
        )


_STOP_SIGNAL_BEFORE_THE_INIT_FN = """
import os, signal, torch
from resnext.data import LoaderOrder, make_loader

parent = os.getpid()
set_num_threads = torch.set_num_threads
hit = []


def set_num_threads_after_a_sigterm(n):
    # torch's worker loop calls this after it has set its own SIGTERM handler and before the
    # worker_init_fn runs: a stop signal lands in each worker just there, once
    if os.getpid() != parent and not hit:
        hit.append(os.getpid())
        os.kill(os.getpid(), signal.SIGTERM)
    set_num_threads(n)


torch.set_num_threads = set_num_threads_after_a_sigterm


class Indices(torch.utils.data.Dataset):
    def __len__(self):
        return 16

    def __getitem__(self, item):
        return item[0]


for persistent in (True, False):
    loader = make_loader(
        Indices(), 4, LoaderOrder(), num_workers=2, persistent_workers=persistent,
        workers_ignore=["SIGTERM", "SIGUSR1"],
    )
    for epoch in range(2):
        print(sorted(int(i) for batch in loader for i in batch), flush=True)
print("blocked here after:", sorted(signal.pthread_sigmask(signal.SIG_BLOCK, [])), flush=True)
"""


def test_a_stop_signal_that_reaches_a_worker_before_its_init_fn_does_not_kill_it(
    tmp_path,
) -> None:
    """The stop signals are blocked while a loader starts its workers, so a SIGTERM that lands
    in a worker between torch's own SIGTERM handler and the ``worker_init_fn`` that ignores it
    waits and is discarded, instead of killing the worker. The script sends one to each
    worker at that moment, persistent workers and one-epoch workers alike."""
    script = tmp_path / "early.py"
    script.write_text(_STOP_SIGNAL_BEFORE_THE_INIT_FN)
    run = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert "killed by signal" not in run.stderr
    assert run.stdout.splitlines() == [str(list(range(16)))] * 4 + ["blocked here after: []"]
