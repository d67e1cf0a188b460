"""The small interface both job backends implement, and the loop that keeps their gauges fresh.

API side: submit, get, result, cancel, stats (depth, running, live workers, backlog, oldest age).
Worker side: claim, update, finish — each fenced by the attempt number that `claim` handed out, so
a worker that lost its job (its lease ran out and another worker took over) can no longer change
it. Every transition to a terminal state is a compare-and-set that counts the outcome in
`elasticsr_jobs_total` in the process that made it: once per job, however often it was run.
"""

from __future__ import annotations

import asyncio
import logging
from abc import ABC, abstractmethod
from dataclasses import dataclass

from service.controller import drain_seconds
from service.errors import Unavailable
from service.jobs.model import JobRecord, JobState
from service.metrics import Metrics

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class QueueStats:
    depth: int  # queued, not started
    running: int
    workers: int  # processes taking jobs now (Redis: 0 while every worker is scaled away)
    backlog_seconds: float  # predicted compute of queued jobs + what is left of running ones
    oldest_age_seconds: float  # of the oldest queued job; 0 when none waits


@dataclass(frozen=True)
class Claim:
    """A job this worker now runs: its record, its input and the attempt that fences its writes."""

    record: JobRecord
    data: bytes
    attempt: int


def queue_full(depth: int, stats: QueueStats) -> Unavailable:
    wait = drain_seconds(stats.backlog_seconds, stats.workers)
    return Unavailable(
        f"the job queue is full ({depth} jobs wait)",
        code="overloaded",
        reason="queue_full",
        retry_after_s=max(1.0, wait),
        detail={"reason": "queue_full"},
    )


class JobQueue(ABC):
    """Jobs with explicit states, stored inputs and results under size limits and expiry."""

    #: True when jobs run inside this process (they share its inference pool with sync requests).
    local: bool = False

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def ended(self, state: JobState | str, count: int = 1) -> None:
        """Count jobs this process moved to a terminal state (called right after a winning CAS)."""
        if count:
            self.metrics.jobs.labels(JobState(state).value).inc(count)

    # --- API side ---------------------------------------------------------------------------------
    @abstractmethod
    async def submit(self, record: JobRecord, data: bytes) -> None:
        """Store the record and input and queue the job; raises Unavailable (queue_full) at the cap."""

    @abstractmethod
    async def get(self, job_id: str) -> JobRecord | None:
        """The record, or None if unknown or expired."""

    @abstractmethod
    async def result(self, job_id: str) -> bytes | None:
        """The encoded image of a succeeded job, or None."""

    @abstractmethod
    async def cancel(self, job_id: str) -> JobRecord | None:
        """Cancel a queued job now, or ask a running one to stop; the record after, None if unknown."""

    @abstractmethod
    async def stats(self) -> QueueStats: ...

    @abstractmethod
    async def sweep(self) -> None:
        """Expire queued jobs whose deadline has passed (and drop what expired records left behind)."""

    # --- worker side ------------------------------------------------------------------------------
    @abstractmethod
    async def claim(self, job_id: str, worker: str) -> Claim | None:
        """Start (or restart, after a lost worker) a job; None if there is nothing to run."""

    @abstractmethod
    async def update(self, job_id: str, attempt: int, fields: dict[str, object]) -> bool:
        """Record progress; False when this attempt no longer owns the job or a cancel was asked."""

    @abstractmethod
    async def finish(
        self,
        job_id: str,
        attempt: int,
        state: JobState,
        fields: dict[str, object],
        result: bytes | None = None,
    ) -> JobState | None:
        """End the job (succeeded becomes cancelled if a cancel was asked meanwhile).

        Returns the state written, or None when this attempt had already lost the job.
        """

    async def close(self) -> None:
        return None


async def maintain_forever(queue: JobQueue, metrics: Metrics, interval_s: float) -> None:
    """Expire overdue jobs and keep the queue gauges current (they drive the worker autoscaler)."""
    while True:
        try:
            await queue.sweep()
            stats = await queue.stats()
            metrics.set_jobs(stats.depth, stats.running, stats.workers, stats.oldest_age_seconds)
        except Exception as exc:  # Redis away for a moment: keep the last values, try again
            log.warning("job queue maintenance failed: %s", exc)
        await asyncio.sleep(interval_s)
