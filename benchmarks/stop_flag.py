"""What the preemption flag costs a DDP training step: steps/s with and without it.

Under DDP every rank all-reduces (MAX) one integer after each optimizer step, so that all
stop after the same step when a stop signal comes (:class:`resnext.engine.preemption.
StopSignals`). This measures DDP training steps (forward, backward with the gradient
all-reduce, SGD) of a model at 32x32, batch 16 per process, in blocks with and without that
poll, interleaved, and the poll alone. The model is the tests' tiny ResNeXt-29, whose step
is the shortest, so the flag's share of it the largest. Run on CPU (gloo) with two processes::

    python -m torch.distributed.run --standalone --nproc-per-node 2 benchmarks/stop_flag.py
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from resnext.benchmarking import cpu_name
from resnext.engine import init_distributed
from resnext.engine.preemption import StopSignals
from resnext.models import create_model
from resnext.table import format_table

# The smallest step makes the flag's share of it the largest: a bound for bigger models.
MODELS = {  # label -> (registry name, its keyword arguments)
    "tiny ResNeXt-29 (0.04M params)": (
        "resnext29_2x4d",
        {"widths": (16, 32, 64), "stem_width": 16},
    ),
}


def steps_per_second(model: nn.Module, stop: StopSignals | None, steps: int) -> float:
    """DDP training steps per second over ``steps`` steps, polling ``stop`` after each."""
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x, y = torch.randn(16, 3, 32, 32), torch.randint(0, 10, (16,))
    dist.barrier()
    start = time.perf_counter()
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        if stop is not None:
            stop.poll()
    dist.barrier()
    return steps / (time.perf_counter() - start)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=40, help="steps per timed block")
    p.add_argument("--rounds", type=int, default=5, help="blocks of each kind, interleaved")
    args = p.parse_args()
    torch.set_num_threads(1)
    info = init_distributed(torch.device("cpu"))
    stop = StopSignals(["SIGTERM", "SIGUSR1"], info, torch.device("cpu"))
    rows = [("model (2 processes, gloo, batch 16, 32x32)", "without", "with", "ratio")]
    for label, (name, kwargs) in MODELS.items():
        torch.manual_seed(0)
        model = DistributedDataParallel(create_model(name, num_classes=10, **kwargs))
        steps_per_second(model, None, 5)  # warm-up
        without, with_poll = [], []
        for _ in range(args.rounds):
            without.append(steps_per_second(model, None, args.steps))
            with_poll.append(steps_per_second(model, stop, args.steps))
        a, b = statistics.median(without), statistics.median(with_poll)
        rows.append((label, f"{a:.2f} steps/s", f"{b:.2f} steps/s", f"{b / a:.3f}"))
    n = 2000
    dist.barrier()
    start = time.perf_counter()
    for _ in range(n):
        stop.poll()
    poll_us = (time.perf_counter() - start) / n * 1e6
    if info.is_main:
        print(f"{cpu_name()}, torch {torch.__version__}, 1 thread per process")
        print(format_table(rows))
        print(f"the poll alone (one all-reduce MAX of one int64): {poll_us:.0f} us")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
