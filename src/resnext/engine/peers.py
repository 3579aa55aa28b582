"""A hung or dead peer: a collective that waits longer than ``train.dist_timeout_s`` fails.

The process group is made with that timeout (:func:`~resnext.engine.distributed.init_distributed`),
so gloo raises where a peer does not answer in time (a SIGSTOPped, swapping or deadlocked
process, a lost node); a peer that exited makes the next collective fail the same way, or
sooner. :func:`peer_failures` turns the backend's error into one line that names the timeout
and the step, on every rank that was waiting, instead of a C++ traceback or a hang forever.
Under NCCL the timeout is enforced by its watchdog, which ends the process itself.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch.distributed as dist

from ..errors import TrainingError
from .distributed import DistInfo
from .progress import Progress

# What gloo and NCCL say when a peer did not answer or went away.
_TIMED_OUT = re.compile(r"Timed out waiting \d+ ?ms|Socket Timeout|collective operation timeout")
_GONE = re.compile(r"Connection (closed|reset) by peer|Broken pipe|ECONNRESET|EPIPE")


class PeerFailureError(TrainingError):
    """A collective failed: a peer process hung past the timeout, or died."""


def collective_failure(e: BaseException) -> str | None:
    """``"timeout"`` or ``"gone"`` where ``e`` is the backend's report of a peer that did
    not answer or went away, else None (any other error keeps its traceback)."""
    text = str(e)
    if _GONE.search(text):
        return "gone"
    if isinstance(e, dist.DistError) or (isinstance(e, RuntimeError) and _TIMED_OUT.search(text)):
        return "timeout"
    return None


@contextmanager
def peer_failures(
    info: DistInfo, timeout_s: float, progress: Callable[[], Progress]
) -> Iterator[None]:
    """Run a DDP job's training; a collective that failed for a peer becomes a
    :class:`PeerFailureError` naming ``train.dist_timeout_s`` and the step (``progress()``)."""
    try:
        yield
    except RuntimeError as e:
        kind = collective_failure(e) if info.enabled else None
        if kind is None:
            raise
        p = progress()
        where = f"after step {p.step} (epoch {p.epoch + 1}, batch {p.epoch_step})"
        what = (
            f"a peer process went away (rank {info.rank} of {info.world_size} was waiting)"
            if kind == "gone"
            else f"a collective waited longer than train.dist_timeout_s={timeout_s:g} s for a "
            f"peer process (rank {info.rank} of {info.world_size} was waiting)"
        )
        raise PeerFailureError(
            f"{what} {where}; the job stops. A peer hung or died: see its own output. "
            "Continue from the newest checkpoint with --resume"
        ) from e
