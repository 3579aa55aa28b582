"""From a :class:`~resnext.config.DataConfig` to transformed splits and loaders."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, default_collate

from ..config import DataConfig
from ..errors import DataError
from .base import (
    LoaderOrder,
    SeededSampler,
    Splits,
    StopSafeLoader,
    TransformedDataset,
    one_thread,
)
from .cifar import cifar_splits
from .digits import DIGITS_CLASSES, DIGITS_MEAN, DIGITS_STD, digits_splits
from .folder import imagefolder_splits, imagelist_splits
from .mnist import mnist_splits
from .preprocess import Preprocess
from .shards import shard_loader, webdataset_splits
from .tiny_imagenet import tiny_imagenet_splits
from .transforms import train_transform


def _digits(cfg: DataConfig) -> Splits:
    train, val, test = digits_splits(cfg.val_fraction, cfg.test_fraction, cfg.split_seed)
    return Splits(
        train,
        val,
        test,
        list(DIGITS_CLASSES),
        DIGITS_MEAN,
        DIGITS_STD,
        info={"source": "scikit-learn digits (built in)"},
    )


def _cifar(name: str) -> Callable[[DataConfig], Splits]:
    def read(cfg: DataConfig) -> Splits:
        return cifar_splits(name, cfg.root, cfg.cifar_labels, cfg.val_fraction, cfg.split_seed)

    return read


def _mnist(name: str) -> Callable[[DataConfig], Splits]:
    def read(cfg: DataConfig) -> Splits:
        return mnist_splits(name, cfg.root, cfg.val_fraction, cfg.split_seed)

    return read


#: Reader of each ``data.name``: returns raw splits (PIL images or uint8 tensors).
READERS: dict[str, Callable[[DataConfig], Splits]] = {
    "digits": _digits,
    "cifar10": _cifar("cifar10"),
    "cifar100": _cifar("cifar100"),
    "mnist": _mnist("mnist"),
    "fashion_mnist": _mnist("fashion_mnist"),
    "imagefolder": imagefolder_splits,
    "imagelist": imagelist_splits,
    "tiny_imagenet": tiny_imagenet_splits,
    "webdataset": webdataset_splits,
}


def build_raw_splits(cfg: DataConfig) -> Splits:
    """The dataset's splits before any transform (readers only)."""
    if cfg.name not in READERS:
        raise DataError(
            f"data.name={cfg.name!r} has no reader; available: {', '.join(sorted(READERS))}"
        )
    try:
        return READERS[cfg.name](cfg)
    except FileNotFoundError as e:  # a path the reader did not check itself
        raise DataError(
            f"data.root={cfg.root!r}: {e}; point it at the {cfg.name} dataset on disk "
            "(see configs/ for each recipe's expected layout)"
        ) from e
    except OSError as e:  # unreadable folder or file the reader did not name itself
        raise DataError(f"cannot read the {cfg.name} dataset at {cfg.root}: {e}") from e


def build_splits(cfg: DataConfig) -> Splits:
    """Read the dataset and attach the train transform to train, eval transform to the rest."""
    raw = build_raw_splits(cfg)
    pre = Preprocess.from_config(cfg, raw.mean, raw.std)
    train_tf = train_transform(
        cfg.augment,
        cfg.image_size,
        pre.mean,
        pre.std,
        cfg.interpolation,
        cfg.color_jitter,
        cfg.pca_lighting,
    )
    eval_tf = pre.transform()

    def wrap(ds: Dataset | None, tf) -> Dataset | None:
        return None if ds is None else TransformedDataset(ds, tf)

    return Splits(
        train=wrap(raw.train, train_tf),
        val=wrap(raw.val, eval_tf),
        test=wrap(raw.test, eval_tf),
        classes=raw.classes,
        mean=pre.mean,
        std=pre.std,
        info=dict(raw.info),
        preprocess=pre,
    )


def collate(batch: list[Any]) -> Any:
    """torch's default collation, on one thread (see :func:`~resnext.data.base.one_thread`)."""
    with one_thread():
        return default_collate(batch)


def make_loader(
    dataset: Dataset,
    batch_size: int,
    order: LoaderOrder = LoaderOrder(),  # noqa: B008 (frozen: one shared default is safe)
    *,
    num_workers: int = 0,
    pin_memory: bool | None = None,
    persistent_workers: bool | None = None,
    workers_ignore: Sequence[str] = (),
) -> DataLoader:
    """A DataLoader whose order and augmentation depend only on ``order`` (seed, epoch, index).

    ``order.start`` skips the first samples of the epoch's order (mid-epoch resume);
    ``order.pad=False`` shards without repeating samples (evaluation under DDP); the default
    order reads every sample once, in the dataset's order.
    ``pin_memory`` defaults to whether CUDA is available; ``persistent_workers`` to
    ``num_workers > 0``. Workers can persist because the sampler hands them
    ``(index, sample_seed)`` pairs: to reuse one loader (and its workers) for the next
    epoch, call :func:`set_loader_epoch` before iterating it again.

    A shard split (``data.name=webdataset``; ``dataset.streamed``) is streamed instead, in
    whole batches (:func:`~resnext.data.shards.shard_loader`): shuffled and padded
    (training), every process gets the same number; otherwise every sample comes exactly once.

    ``workers_ignore`` names signals the worker processes ignore (a training run's stop
    signals, which must end the run at a step boundary, not kill its workers under it).
    """
    if pin_memory is None:
        pin_memory = torch.cuda.is_available()
    if persistent_workers is None:
        persistent_workers = num_workers > 0
    if _streamed(dataset):
        return shard_loader(
            dataset,  # type: ignore[arg-type]
            batch_size,
            order,
            num_workers=num_workers,
            pin_memory=pin_memory,
            persistent_workers=persistent_workers,
            workers_ignore=workers_ignore,
        )
    return StopSafeLoader(
        dataset,
        batch_size=batch_size,
        sampler=SeededSampler(len(dataset), order),  # type: ignore[arg-type]
        num_workers=num_workers,
        pin_memory=pin_memory,
        persistent_workers=persistent_workers and num_workers > 0,
        drop_last=False,
        collate_fn=collate,
        generator=torch.Generator().manual_seed(order.seed),
        workers_ignore=workers_ignore,
    )


def set_loader_epoch(loader: DataLoader, epoch: int, start: int = 0) -> None:
    """Make a loader from :func:`make_loader` serve epoch ``epoch`` from its sample ``start``
    on its next pass (its workers, if persistent, keep running)."""
    if _streamed(loader.dataset):  # the stream orders itself
        loader.dataset.set_epoch(epoch, start)  # type: ignore[attr-defined]
        len(loader)  # the loader keeps the length it last reported; this pass has its own
    else:
        loader.sampler.set_epoch(epoch, start)  # type: ignore[attr-defined]


def _streamed(dataset: Any) -> bool:
    """Whether a split (or a loader's dataset) is read in sequence, in whole batches; a
    dataset that does not say is map-style (any reader, torchvision's included)."""
    return bool(getattr(dataset, "streamed", False))
