"""Dynamic batching: single images from concurrent requests, run through the model together.

Each request submits its preprocessed images and awaits their rows of the result.
One task gathers waiting images into a batch: it takes the first image in the queue, then
whatever else arrives until the batch holds ``max_batch`` images or ``max_wait_s`` has
passed since that first image arrived (images that queued while the model was busy are
taken at once, with no extra wait). The batch runs in one model call on a thread of its
own, so the event loop keeps accepting and decoding requests meanwhile, and one model call
runs at a time: on a CPU, two concurrent calls only fight over the same cores.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from ..errors import ResnextError


class Overloaded(ResnextError):
    """The queue of images waiting for the model is full; the client should retry later."""


class BatcherClosed(ResnextError):
    """The batcher is stopped (the server is shutting down)."""


@dataclass
class Result:
    """One image's row of the model's output and the size of the batch it ran in."""

    probabilities: torch.Tensor  # (num_classes,) softmax of this image
    batch_size: int  # how many images shared the model call


@dataclass
class _Waiting:
    tensor: torch.Tensor
    future: asyncio.Future[Result]  # done = answered, failed, or cancelled by its caller
    arrived: float  # event-loop time of the submit


class Batcher:
    """Runs ``run_batch`` on batches gathered from :meth:`submit` calls.

    Args:
        run_batch: maps a stacked ``(N, C, S, S)`` batch to ``(N, num_classes)`` rows, called
            on the model thread (e.g. ``Classifier.probabilities``).
        max_batch: the most images one model call takes.
        max_wait_s: how long the first image of a batch waits for others to join it.
        max_queue: the most images waiting for or in the model; a submit beyond it raises
            :class:`Overloaded` instead of letting the wait grow without bound.
    """

    def __init__(
        self,
        run_batch: Callable[[torch.Tensor], torch.Tensor],
        max_batch: int,
        max_wait_s: float,
        max_queue: int,
    ) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        if max_wait_s < 0:
            raise ValueError(f"max_wait_s must be at least 0, got {max_wait_s}")
        if max_queue < 1:
            raise ValueError(f"max_queue must be at least 1, got {max_queue}")
        self.run_batch = run_batch
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self.max_queue = max_queue
        self.pending = 0  # images submitted and not answered yet
        self._queue: asyncio.Queue[_Waiting] | None = None
        self._task: asyncio.Task[None] | None = None
        self._in_model: asyncio.Future[None] | None = None  # the latest batch's model call
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None

    async def start(self) -> None:
        """Start gathering (call it on the event loop that will submit)."""
        self._queue = asyncio.Queue()
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="resnext-model"
        )
        self._task = asyncio.create_task(self._gather_and_run(), name="resnext-batcher")

    async def stop(self) -> None:
        """Stop gathering: the batch in the model, if any, is finished and answered; images
        still waiting get :class:`BatcherClosed`. (The server stops the batcher only once
        every request is answered.)"""
        task, queue, executor = self._task, self._queue, self._executor
        if task is None or queue is None or executor is None:
            return
        self._task = None
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        if self._in_model is not None:
            await self._in_model  # answers its batch; it raises nothing
        _fail([queue.get_nowait() for _ in range(queue.qsize())])
        executor.shutdown(wait=True)

    async def run(self, batch: torch.Tensor) -> torch.Tensor:
        """Run one batch on the model thread now, outside the queue (the warm-up)."""
        if self._executor is None:
            raise BatcherClosed("the batcher is not started")
        return await asyncio.get_running_loop().run_in_executor(
            self._executor, self.run_batch, batch
        )

    async def submit(self, tensors: Sequence[torch.Tensor]) -> list[Result]:
        """Queue preprocessed ``(C, S, S)`` images (one request's) and wait for their results,
        in order. All of them are queued or, when there is no room for them all, none
        (:class:`Overloaded`)."""
        queue = self._queue
        if queue is None or self._task is None:
            raise BatcherClosed("the batcher is not running")
        if self.pending + len(tensors) > self.max_queue:
            raise Overloaded(
                f"{self.pending} images are already waiting for the model and the limit is "
                f"{self.max_queue} (resnext serve --max-queue); retry later"
            )
        loop = asyncio.get_running_loop()
        waiting = [_Waiting(t, loop.create_future(), loop.time()) for t in tensors]
        for w in waiting:
            self.pending += 1
            w.future.add_done_callback(self._answered)
            queue.put_nowait(w)
        # A cancelled caller cancels these futures too: the gathering skips them.
        return list(await asyncio.gather(*(w.future for w in waiting)))

    def _answered(self, future: asyncio.Future[Result]) -> None:
        self.pending -= 1

    async def _gather_and_run(self) -> None:
        queue = self._queue
        if queue is None:
            raise BatcherClosed("the batcher is not started")
        loop = asyncio.get_running_loop()
        while True:
            batch: list[_Waiting] = []
            try:
                batch.append(await queue.get())
                deadline = batch[0].arrived + self.max_wait_s
                while len(batch) < self.max_batch:
                    if not queue.empty():
                        batch.append(queue.get_nowait())
                        continue
                    remaining = deadline - loop.time()
                    if remaining <= 0:
                        break
                    try:
                        batch.append(await asyncio.wait_for(queue.get(), remaining))
                    except asyncio.TimeoutError:  # TimeoutError's alias from Python 3.11 on
                        break
                batch = [w for w in batch if not w.future.done()]
                if batch:
                    self._in_model = asyncio.ensure_future(self._run(batch))
                    batch = []  # the run answers them, even if the batcher stops meanwhile
                    await asyncio.shield(self._in_model)
            except asyncio.CancelledError:  # stopped: nobody is left waiting forever
                _fail(batch)
                raise

    async def _run(self, batch: list[_Waiting]) -> None:
        try:
            out = await self.run(torch.stack([w.tensor for w in batch]))
        except Exception as e:  # the model failed: every request of the batch gets the error
            _fail(batch, e)
            return
        for row, w in zip(out, batch, strict=True):
            if not w.future.done():
                w.future.set_result(Result(row, len(batch)))


def _fail(waiting: list[_Waiting], error: BaseException | None = None) -> None:
    """Answer with ``error`` (default: the server is shutting down) whoever still waits."""
    error = error or BatcherClosed("the server is shutting down")
    for w in waiting:
        if not w.future.done():
            w.future.set_exception(error)
