"""Preemption: a stop signal (``train.stop_signals``) ends a run cleanly at a step boundary.

A cluster sends SIGTERM (SLURM, Kubernetes, spot instances; ``torchrun`` forwards it to its
workers), or SIGUSR1 with ``sbatch --signal``, some time before it kills a job. The handler
only records the signal: a signal that arrives in the middle of a step, of a collective or of a
checkpoint write interrupts none of them. After each optimizer step the trainer asks
:meth:`StopSignals.poll`; under DDP the processes agree there (the signal numbers all-reduced
with MAX), so every rank stops after the same step, ``last.pt`` is written at that step, and
every process exits with :func:`exit_status` (128 + the signal's number, what a shell, SLURM
and torchrun report for a process the signal ended: 143 for SIGTERM, 138 for SIGUSR1).
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Sequence
from types import FrameType, TracebackType
from typing import Any

import torch
import torch.distributed as dist

from .distributed import DistInfo
from .progress import Progress


def exit_status(sig: signal.Signals) -> int:
    """The exit status of a run a stop signal ended: 128 + its number, as a shell reports a
    process that the signal killed (so schedulers read it as ended by that signal)."""
    return 128 + int(sig)


def stop_record(p: Progress, sig: signal.Signals | None) -> dict[str, Any]:
    """The ``stop`` record of ``metrics.jsonl``: where the run stopped, and why (a stop
    signal, else ``train.max_steps``)."""
    why = {"reason": "signal", "signal": sig.name} if sig else {"reason": "train.max_steps"}
    return {"kind": "stop", "epoch": p.epoch + 1, "step": p.step, "batch": p.epoch_step, **why}


class StopSignals:
    """While entered, ``signals`` set a flag instead of ending the process.

    Args:
        names: signal names (``train.stop_signals``, checked by the config); empty: no handler,
            no collective, the signals keep their default action.
        dist: this process's place in the job; under DDP :meth:`poll` is a collective.
        device: where the flag is all-reduced (the process group's device).
    """

    def __init__(self, names: Sequence[str], dist: DistInfo, device: torch.device) -> None:
        self.signals = tuple(signal.Signals[name] for name in names)
        self.dist = dist
        self.received: signal.Signals | None = None  # the first one this process got
        self.agreed: signal.Signals | None = None  # the one every process stopped for
        self._flag = torch.zeros(1, dtype=torch.int64, device=device)
        self._previous: dict[signal.Signals, object] = {}

    def _handler(self, signum: int, frame: FrameType | None) -> None:
        # Only a flag: the step, the collective or the checkpoint write in progress goes on.
        if self.received is None:
            self.received = signal.Signals(signum)

    def __enter__(self) -> StopSignals:
        # Python lets only the main thread set handlers (a Trainer run in a thread has none).
        if threading.current_thread() is threading.main_thread():
            for sig in self.signals:
                self._previous[sig] = signal.signal(sig, self._handler)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # The handlers the process had before come back (a caller that runs the Trainer in
        # its own process, e.g. a test, must stay stoppable by SIGTERM afterwards).
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)  # type: ignore[arg-type]
        self._previous.clear()

    def poll(self) -> signal.Signals | None:
        """The stop signal every process agrees on, or None. Call it at the same points on
        every rank (it is a collective under DDP: one all-reduce of one integer)."""
        if self.agreed is not None or not self.signals:
            return self.agreed
        got = int(self.received or 0)
        if self.dist.enabled:
            self._flag.fill_(got)
            dist.all_reduce(self._flag, op=dist.ReduceOp.MAX)
            got = int(self._flag.item())
        if got:
            self.agreed = signal.Signals(got)
        return self.agreed
