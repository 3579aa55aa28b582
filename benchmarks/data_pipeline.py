"""Input pipeline speed beside model training speed, on this machine.

Writes N 500x375 JPEGs (ImageNet's typical size; smooth synthetic scenes plus noise,
quality 90; :func:`resnext.benchmarking.write_jpegs`) to a temporary image folder, then
measures:

- the ImageNet train pipeline (decode, random-resized crop to 224, flip, colour jitter,
  PCA lighting, normalise; batches of 32) in images/s with 0, 1 and 2 DataLoader
  workers, and per worker;
- a training step (forward, backward, SGD) of resnext50_32x4d and the smaller
  resnext26_32x4d at 224x224, in images/s.

The pipeline keeps up when its images/s exceed the model's. Run:
``python benchmarks/data_pipeline.py`` (``--help`` for sizes).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

from resnext.benchmarking import cpu_name, imagenet_train_config, median_seconds, write_jpegs
from resnext.data import LoaderOrder, build_splits, load_image, make_loader
from resnext.models import create_model
from resnext.table import format_table


def pipeline_rate(root: Path, workers: int, batch_size: int, epochs: int) -> float:
    """Train-pipeline images/s with ``workers`` loader processes (after one warm-up epoch)."""
    train = build_splits(imagenet_train_config(root, "imagefolder", workers)).train
    loader = make_loader(train, batch_size, LoaderOrder(shuffle=True, seed=0), num_workers=workers)
    for _ in loader:  # warm-up: worker start-up, file cache
        pass
    n, start = 0, time.perf_counter()
    for epoch in range(1, epochs + 1):
        loader.sampler.set_epoch(epoch)  # type: ignore[attr-defined]
        for x, _ in loader:
            n += x.shape[0]
    return n / (time.perf_counter() - start)


def decode_rate(root: Path) -> float:
    """images/s of decoding alone (load_image: open, decode, RGB), one process."""
    paths = sorted((root / "train").rglob("*.jpg"))
    start = time.perf_counter()
    for p in paths:
        load_image(p)
    return len(paths) / (time.perf_counter() - start)


def train_rate(name: str, batch_size: int, steps: int) -> float:
    """Training images/s of a model at 224x224 (forward, backward, SGD step) on the CPU: the
    median step of ``steps`` after one untimed."""
    model = create_model(name, num_classes=1000)
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    x = torch.randn(batch_size, 3, 224, 224)
    y = torch.randint(0, 1000, (batch_size,))

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()

    return batch_size / median_seconds(step, repeat=steps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=256, help="JPEGs to write")
    parser.add_argument("--batch-size", type=int, default=32, help="pipeline batch size")
    parser.add_argument("--epochs", type=int, default=2, help="timed pipeline epochs")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--models", nargs="+", default=["resnext50_32x4d", "resnext26_32x4d"])
    parser.add_argument("--model-batch", type=int, default=16, help="training batch size")
    parser.add_argument("--model-steps", type=int, default=3, help="timed training steps")
    args = parser.parse_args()

    rows: list[list[object]] = [["what", "workers", "batch", "images/s", "images/s/worker"]]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        size = write_jpegs(root, args.images)
        label = f"{args.images} JPEGs 500x375, mean {size / args.images / 1024:.0f} KiB"
        rows.append([f"decode only ({label})", 0, 1, f"{decode_rate(root):.1f}", "-"])
        for w in args.workers:
            rate = pipeline_rate(root, w, args.batch_size, args.epochs)
            per = rate / max(w, 1)
            rows.append(
                ["ImageNet train pipeline", w, args.batch_size, f"{rate:.1f}", f"{per:.1f}"]
            )
    for name in args.models:
        rate = train_rate(name, args.model_batch, args.model_steps)
        rows.append([f"{name} train step, 224", "-", args.model_batch, f"{rate:.2f}", "-"])
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"{os.cpu_count()} CPUs ({cpu_name()}), device cpu"
    )
    print(format_table(rows))


if __name__ == "__main__":
    main()
