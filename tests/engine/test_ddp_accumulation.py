"""Gradient accumulation under DDP (``Stepper.accumulate``'s ``no_sync`` path, 2 gloo CPU
processes under torchrun) against one process with the same global batch: the same
weights after a few steps. The model's BN is in eval mode, so a batch's statistics play no
part and the two runs compute the same function of the same 16 images per step.

Run as a script (``PYTHONPATH=tests torchrun ... tests/engine/test_ddp_accumulation.py OUT``)
it is the DDP side: each process trains on its share and writes its weights to
``OUT/rank<r>.pt``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from helpers import TESTS, TINY, torchrun_standalone
from resnext.config import Config, from_dict
from resnext.engine.distributed import DistInfo
from resnext.engine.step import Stepper
from resnext.models import create_model

WORLD, ACCUM, MICRO = 2, 2, 4  # 2 processes x 2 micro-batches x 4 images
GLOBAL = WORLD * ACCUM * MICRO  # 16 images per optimizer step
STEPS = 4


def _config(batch_size: int, accumulate_steps: int) -> Config:
    return from_dict(
        {
            "train": {
                "batch_size": batch_size,
                "accumulate_steps": accumulate_steps,
                "ema_decay": None,
                "channels_last": False,
                "precision": "fp32",  # compared to 1e-5: bf16 rounds the two layouts apart
                "clip_grad_norm": 1.0,  # clipping sees the whole step's (all-reduced) gradient
            },
            # On random images this net amplifies rounding differences once lr reaches ~0.1
            # (ReLUs flip); at 0.05 both runs agree to ~1e-7 after 4 steps.
            "optim": {"lr": 0.05, "weight_decay": 5e-4, "nesterov": True},
            "schedule": {"name": "cosine", "warmup_epochs": 0.5},
        }
    )


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    model = create_model("resnext29_2x4d", num_classes=10, **TINY)
    return model.eval()  # BN normalises with its running statistics: no batch dependence


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(STEPS * GLOBAL, 3, 32, 32, generator=g)
    return x, torch.randint(0, 10, (STEPS * GLOBAL,), generator=g)


def train(rank: int, world: int, batch: int, accum: int) -> dict[str, torch.Tensor]:
    """``STEPS`` optimizer steps; step ``t`` uses images ``16t .. 16t + 15``, of which
    process ``rank`` takes micro-batches ``rank * accum + m`` of ``batch`` images each."""
    x, y = _data()
    model = _model()
    stepper = Stepper(
        model,
        _config(batch, accum),
        steps_per_epoch=STEPS,
        total_steps=STEPS,
        device=torch.device("cpu"),
        dist=DistInfo(rank=rank, world_size=world),
    )
    for t in range(STEPS):
        for m in range(accum):
            lo = t * GLOBAL + (rank * accum + m) * batch
            stepper.accumulate(x[lo : lo + batch], y[lo : lo + batch], accum, m == accum - 1)
        stepper.step()
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.mark.slow
def test_accumulation_under_ddp_equals_one_process_with_the_global_batch(tmp_path: Path) -> None:
    cmd = torchrun_standalone(__file__, str(tmp_path), nproc=WORLD)
    path = os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")]))  # helpers
    env = {**os.environ, "PYTHONPATH": path}
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]
    single = train(0, 1, GLOBAL, 1)
    start = _model().state_dict()
    moved = max((single[k] - start[k]).abs().max().item() for k in single)
    assert moved > 1e-2  # the steps changed the weights: equality below is not trivial
    for k, v in single.items():
        assert torch.equal(ranks[0][k], ranks[1][k]), f"{k}: the processes disagree"
        assert torch.allclose(ranks[0][k], v, rtol=0, atol=1e-5), (
            f"{k}: DDP with accumulation differs from one process by "
            f"{(ranks[0][k] - v).abs().max().item():.2e}"
        )


if __name__ == "__main__":  # one process of the torchrun job
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    weights = train(rank, dist.get_world_size(), MICRO, ACCUM)
    torch.save(weights, os.path.join(sys.argv[1], f"rank{rank}.pt"))
    dist.destroy_process_group()
