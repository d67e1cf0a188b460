"""Bounded inference off the event loop, with the bookkeeping the controller reads.

A dedicated thread pool of `workers` threads runs the models (torch releases the GIL, so threads
suffice); an asyncio semaphore of the same size orders the waiting requests (FIFO). Every admitted
request carries its predicted compute time, so the pool always knows its backlog in seconds.

Predictions stray: on a saturated machine each hand-off between jobs goes through a busy event
loop, and queued work was predicted at lighter load. So the pool measures how real waits and
compute times compare with their predictions (service/misprediction.py) and offers two factors,
each the mean ratio plus `deviations` mean deviations: `wait_correction`, which the controller
multiplies into its wait prediction, and `compute_margin`, which the start-time check applies.
When a worker frees up, a request that can no longer finish its predicted compute before its
deadline is not run as planned: a `fallback` may swap in cheaper work that still fits (the
controller's choice for the time left), otherwise it is dropped. Starting it anyway would answer
late and make everyone behind it late too.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

import torch

from models.allocator import retain_freed_memory
from service.errors import Unavailable
from service.misprediction import RatioEstimate

T = TypeVar("T")

# Shorter waits and computes measure scheduling noise more than prediction error.
MIN_LEARNING_WAIT_SECONDS = 0.05
MIN_LEARNING_COMPUTE_SECONDS = 0.02


@dataclass(eq=False)
class Ticket:
    """An admitted request's place in line."""

    predicted_seconds: float
    deadline_at: float  # time.monotonic() by which its compute should finish
    predicted_wait: float = 0.0  # before the pool's wait correction
    admitted_at: float = field(default_factory=time.monotonic)
    started_at: float | None = None
    id: int = 0


# Cheaper work for the time left before a ticket's deadline (already divided by the compute
# margin): (predicted seconds, callable), or None when nothing fits.
Fallback = Callable[[float], Awaitable[tuple[float, Callable[[], Any]] | None]]


@dataclass(frozen=True)
class RunResult:
    value: Any
    wait_seconds: float
    compute_seconds: float


class InferencePool:
    """`workers` parallel inference slots with a FIFO line in front of them."""

    def __init__(self, workers: int, torch_threads: int, deviations: float = 2.0) -> None:
        self.workers = workers
        self.deviations = deviations
        self.wait_error = RatioEstimate()
        self.compute_error = RatioEstimate()
        torch.set_num_threads(torch_threads)  # process-wide intra-op pool, shared by the workers
        retain_freed_memory()  # process-wide too: freed tensors' pages are reused, not re-faulted
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="elasticsr-infer")
        self._slots: asyncio.Semaphore | None = None  # created on the serving loop
        self._queued: set[Ticket] = set()
        self._running: set[Ticket] = set()
        self._ids = itertools.count(1)

    # --- bookkeeping read by the controller -----------------------------------------------------
    @property
    def queued(self) -> int:
        return len(self._queued)

    @property
    def running(self) -> int:
        return len(self._running)

    @property
    def wait_correction(self) -> float:
        """Factor for predicted waits: measured ÷ predicted, mean plus `deviations` deviations."""
        return self.wait_error.bound(self.deviations)

    @property
    def compute_margin(self) -> float:
        """Factor for predicted compute times, likewise."""
        return self.compute_error.bound(self.deviations)

    def backlog_seconds(self, now: float | None = None) -> float:
        """Predicted compute still owed: all of each queued job, the rest of each running one."""
        now = time.monotonic() if now is None else now
        owed = sum(t.predicted_seconds for t in self._queued)
        for t in self._running:
            owed += max(0.0, t.predicted_seconds - (now - (t.started_at or now)))
        return owed

    # --- serving ----------------------------------------------------------------------------------
    def admit(self, predicted_seconds: float, deadline_at: float, predicted_wait: float = 0.0) -> Ticket:
        """Reserve a place in line now (synchronously, so no race with other admissions).

        `predicted_wait` is the controller's wait for this request before the correction the
        pool learned (`Decision.raw_wait_seconds`): the pool learns from how long it really waits.
        """
        ticket = Ticket(predicted_seconds, deadline_at, predicted_wait, id=next(self._ids))
        self._queued.add(ticket)
        return ticket

    def release(self, ticket: Ticket) -> None:
        self._queued.discard(ticket)
        self._running.discard(ticket)

    async def run(self, ticket: Ticket, fn: Callable[[], T], fallback: Fallback | None = None) -> RunResult:
        """Wait for a worker, then run `fn` (or the fallback's cheaper work) on it.

        Raises Unavailable (`deadline_expired`) when neither fits the time left. Cancelling the
        caller (its client left) frees its place in line at once, but a worker that has started
        cannot be interrupted: its slot is given back when the thread really finishes, so the pool
        never runs more than `workers` jobs and its bookkeeping stays true.
        """
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.workers)
        try:
            await self._slots.acquire()
        except BaseException:
            self.release(ticket)
            raise
        handed_off = False
        try:
            now = time.monotonic()
            wait = now - ticket.admitted_at
            if ticket.predicted_wait >= MIN_LEARNING_WAIT_SECONDS:
                self.wait_error.observe(ticket.predicted_wait, wait)
            margin = self.compute_margin
            left = ticket.deadline_at - now
            if ticket.predicted_seconds * margin > left:
                late = await fallback(left / margin) if fallback is not None and left > 0 else None
                if late is None:
                    raise Unavailable(
                        f"after {wait * 1000:.0f} ms in the queue the request can no longer finish "
                        "before its deadline",
                        code="deadline_expired",
                        retry_after_s=self.backlog_seconds() / self.workers,
                    )
                ticket.predicted_seconds, fn = late
                now = time.monotonic()
            self._queued.discard(ticket)
            ticket.started_at = now
            self._running.add(ticket)
            loop = asyncio.get_running_loop()
            future = self._executor.submit(fn)
            handed_off = True
            future.add_done_callback(lambda _: self._finished_soon(loop, ticket))
            value = await asyncio.wrap_future(future)
            compute = time.monotonic() - now
            if ticket.predicted_seconds >= MIN_LEARNING_COMPUTE_SECONDS:
                self.compute_error.observe(ticket.predicted_seconds, compute)
            return RunResult(value, wait, compute)
        finally:
            if not handed_off:
                self._finished(ticket)

    def _finished_soon(self, loop: asyncio.AbstractEventLoop, ticket: Ticket) -> None:
        """From the worker thread: hand the slot back on the event loop (which owns the bookkeeping)."""
        with contextlib.suppress(RuntimeError):  # the loop is already closed at shutdown
            loop.call_soon_threadsafe(self._finished, ticket)

    def _finished(self, ticket: Ticket) -> None:
        self.release(ticket)
        assert self._slots is not None
        self._slots.release()

    @property
    def free_slots(self) -> int:
        """Workers idle now (for tests and leak checks)."""
        return self.workers if self._slots is None else self._slots._value

    def run_blocking(self, fn: Callable[[], T]) -> T:
        """Run on a worker thread from outside the event loop (warm-up)."""
        return self._executor.submit(fn).result()

    def shutdown(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
