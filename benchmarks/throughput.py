"""Model throughput on this machine: ours beside torchvision's, same architecture and input.

Prints one table of images per second for inference and for a training step
(forward, backward, SGD), in NCHW and channels_last memory layouts. Run with
``make bench`` or ``python benchmarks/throughput.py --model resnext50_32x4d``.
"""

from __future__ import annotations

import argparse
import time

import torch
import torchvision
from torch import nn

from resnext.models import create_model
from resnext.table import format_table


def images_per_second(
    model: nn.Module, x: torch.Tensor, train: bool, warmup: int, iters: int
) -> float:
    y = torch.zeros(x.shape[0], dtype=torch.long)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    model.train(train)

    def step() -> None:
        if train:
            opt.zero_grad(set_to_none=True)
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
        else:
            with torch.inference_mode():
                model(x)

    for _ in range(warmup):
        step()
    start = time.perf_counter()
    for _ in range(iters):
        step()
    return iters * x.shape[0] / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnext50_32x4d")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--input-size", type=int, default=224)
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    rows: list[list[object]] = [["implementation", "layout", "inference img/s", "train img/s"]]
    builders = {"resnext": lambda: create_model(args.model)}
    if hasattr(torchvision.models, args.model):
        builders["torchvision"] = getattr(torchvision.models, args.model)
    for impl, build in builders.items():
        for layout in ("nchw", "channels_last"):
            torch.manual_seed(0)
            model = build()
            x = torch.randn(args.batch_size, 3, args.input_size, args.input_size)
            if layout == "channels_last":
                model = model.to(memory_format=torch.channels_last)
                x = x.contiguous(memory_format=torch.channels_last)
            infer = images_per_second(model, x, False, 2, args.iters)
            train = images_per_second(model, x, True, 1, args.iters)
            rows.append([impl, layout, f"{infer:.1f}", f"{train:.1f}"])
    print(
        f"{args.model}, batch {args.batch_size}, {args.input_size}x{args.input_size}, "
        f"{torch.get_num_threads()} threads, torch {torch.__version__}, device cpu"
    )
    print(format_table(rows, left=2))


if __name__ == "__main__":
    main()
