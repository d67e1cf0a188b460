"""The default job backend: a bounded queue inside the API process, no Redis needed (`make serve`).

Jobs wait in a FIFO and one runner task renders them one at a time through the API's own inference
pool, so a running job is part of the backlog the sync controller sees (and sync requests keep
flowing between its chunks of work on the pool's other workers, if any). Inputs and results live
in memory, bounded: at most `ELASTICSR_MAX_JOBS` queued jobs, and `ELASTICSR_MAX_STORED_BYTES` for
all stored inputs and results together. To make room, only jobs whose outcome reached their client
are dropped before their TTL (oldest first); an ended job nobody has collected is kept, and new
jobs are refused (503) while there is no room, so no accepted job is lost to newer ones.
All state changes happen on the event loop without awaiting in between, so each is atomic.
Nothing survives a restart: use the Redis backend when jobs must not be lost.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict, deque

from service.errors import Unavailable
from service.inference import InferencePool
from service.jobs.base import Claim, JobQueue, QueueStats, queue_full
from service.jobs.execute import JobExecutor
from service.jobs.model import JobRecord, JobState
from service.metrics import Metrics
from service.settings import Settings

log = logging.getLogger(__name__)

# Records kept (besides their byte budget) per queued-job slot: bounds failed jobs too.
RECORDS_PER_SLOT = 16


class InProcessQueue(JobQueue):
    local = True

    def __init__(self, settings: Settings, metrics: Metrics, pool: InferencePool) -> None:
        super().__init__(metrics)
        self.settings = settings
        self.pool = pool
        self._records: OrderedDict[str, JobRecord] = OrderedDict()  # oldest first
        self._inputs: dict[str, bytes] = {}
        self._results: dict[str, bytes] = {}
        self._pending: deque[str] = deque()
        self._delivered: set[str] = set()  # ended jobs whose outcome the client has collected
        self._bytes = 0
        self._wakeup = asyncio.Event()

    # --- storage ----------------------------------------------------------------------------------
    def _change(self, job_id: str, **fields: object) -> JobRecord:
        """Replace a record with a validated copy (records are never mutated in place)."""
        record = JobRecord.model_validate({**self._records[job_id].model_dump(), **fields})
        self._records[job_id] = record
        return record

    def _drop_input(self, job_id: str) -> None:
        self._bytes -= len(self._inputs.pop(job_id, b""))

    def _forget(self, job_id: str) -> None:
        self._records.pop(job_id, None)
        self._delivered.discard(job_id)
        self._drop_input(job_id)
        self._bytes -= len(self._results.pop(job_id, b""))

    def _purge(self, now: float) -> None:
        """Drop finished jobs older than the result TTL."""
        ttl = self.settings.result_ttl_s
        for job_id, record in list(self._records.items()):
            if record.finished_at is not None and record.finished_at + ttl <= now:
                self._forget(job_id)

    def _make_room(self, nbytes: int, records: int = 0) -> bool:
        """Drop the oldest delivered jobs until `nbytes` (and `records`) more fit in the budgets.

        Delivered: a succeeded job once its result was downloaded, any other ended job once its
        final record was read. An ended job that nobody has collected stays until its TTL however
        many jobs come after it: dropping it would lose a job that was accepted, so the caller
        refuses the new work instead.
        """
        limit, max_records = self.settings.max_stored_bytes, RECORDS_PER_SLOT * self.settings.max_jobs

        def fits() -> bool:
            return self._bytes + nbytes <= limit and len(self._records) + records <= max_records

        for job_id in [i for i in self._records if i in self._delivered]:
            if fits():
                break
            self._forget(job_id)
        return fits()

    def _end(
        self, job_id: str, state: JobState, fields: dict[str, object], result: bytes | None
    ) -> JobRecord:
        self._drop_input(job_id)
        if state is JobState.SUCCEEDED and result is not None:
            self._results[job_id] = result
            self._bytes += len(result)
        record = self._change(job_id, state=state, **fields)
        self.ended(state)
        return record

    # --- API side ---------------------------------------------------------------------------------
    async def submit(self, record: JobRecord, data: bytes) -> None:
        self._purge(time.time())
        if len(self._pending) >= self.settings.max_jobs:
            raise queue_full(len(self._pending), await self.stats())
        if not self._make_room(len(data), records=1):
            raise Unavailable(
                "the in-process job store (ELASTICSR_MAX_STORED_BYTES, and its record cap) is "
                "full of queued jobs and results not yet collected; try again later",
                code="overloaded",
                reason="queue_full",
                retry_after_s=max(1.0, (await self.stats()).backlog_seconds),
                detail={"reason": "queue_full"},
            )
        self._records[record.id] = record
        self._inputs[record.id] = data
        self._bytes += len(data)
        self._pending.append(record.id)
        self._wakeup.set()

    async def get(self, job_id: str) -> JobRecord | None:
        self._purge(time.time())
        record = self._records.get(job_id)
        if record is not None and record.state.terminal and record.state is not JobState.SUCCEEDED:
            self._delivered.add(job_id)  # its final state is all there is to collect
        return record

    async def result(self, job_id: str) -> bytes | None:
        self._purge(time.time())
        body = self._results.get(job_id)
        if body is not None:
            self._delivered.add(job_id)
        return body

    async def cancel(self, job_id: str) -> JobRecord | None:
        record = await self.get(job_id)
        if record is None:
            return None
        if record.state is JobState.QUEUED:
            self._pending.remove(job_id)
            fields = {
                "finished_at": time.time(),
                "error_code": "cancelled",
                "error_message": "cancelled by the client",
            }
            self._delivered.add(job_id)  # the client is handed its final record
            return self._end(job_id, JobState.CANCELLED, fields, None)
        if record.state is JobState.RUNNING:
            return self._change(job_id, cancel_requested=True)
        return record

    async def stats(self) -> QueueStats:
        now = time.time()
        queued = [self._records[i] for i in self._pending]
        running = sum(1 for r in self._records.values() if r.state is JobState.RUNNING)
        return QueueStats(
            depth=len(queued),
            running=running,
            workers=self.pool.workers,
            backlog_seconds=sum(r.predicted_seconds or 0.0 for r in queued) + self.pool.backlog_seconds(),
            oldest_age_seconds=now - queued[0].created_at if queued else 0.0,
        )

    async def sweep(self) -> None:
        now = time.time()
        self._purge(now)
        for job_id in list(self._pending):
            record = self._records[job_id]
            if record.deadline_at <= now:
                self._pending.remove(job_id)
                fields = {
                    "finished_at": now,
                    "error_code": "deadline_expired",
                    "error_message": "the deadline passed while the job waited in the queue",
                }
                self._end(job_id, JobState.EXPIRED, fields, None)

    # --- worker side ------------------------------------------------------------------------------
    async def claim(self, job_id: str, worker: str) -> Claim | None:
        record = self._records.get(job_id)
        if record is None or record.state is not JobState.QUEUED:
            return None
        if job_id in self._pending:  # the runner pops it first; anyone else claiming takes it too
            self._pending.remove(job_id)
        now = time.time()
        record = self._change(job_id, state=JobState.RUNNING, worker=worker, attempts=1, started_at=now)
        return Claim(record, self._inputs[job_id], record.attempts)

    def _owned(self, job_id: str, attempt: int) -> JobRecord | None:
        record = self._records.get(job_id)
        if record is None or record.state is not JobState.RUNNING or record.attempts != attempt:
            return None
        return record

    async def update(self, job_id: str, attempt: int, fields: dict[str, object]) -> bool:
        record = self._owned(job_id, attempt)
        if record is None:
            return False
        return not self._change(job_id, **fields).cancel_requested

    async def finish(
        self,
        job_id: str,
        attempt: int,
        state: JobState,
        fields: dict[str, object],
        result: bytes | None = None,
    ) -> JobState | None:
        record = self._owned(job_id, attempt)
        if record is None:
            return None
        if state is JobState.SUCCEEDED and record.cancel_requested:
            state, result = JobState.CANCELLED, None
            fields = {**fields, "error_code": "cancelled", "error_message": "cancelled by the client"}
        if result is not None:
            self._drop_input(job_id)  # the input's bytes make room for the result
            if not self._make_room(len(result)):
                state, result = JobState.FAILED, None
                fields = {
                    **fields,
                    "error_code": "result_too_large",
                    "error_message": "no room for the result in ELASTICSR_MAX_STORED_BYTES",
                }
        return self._end(job_id, state, fields, result).state

    # --- the runner -------------------------------------------------------------------------------
    async def run_forever(self, executor: JobExecutor) -> None:
        """Render queued jobs one at a time, oldest first."""
        while True:
            while not self._pending:
                self._wakeup.clear()
                await self._wakeup.wait()
            job_id = self._pending.popleft()
            try:
                await executor.run(job_id)
            except Exception:  # executor.run ends jobs itself; this is a last resort
                log.exception("job %s: runner error", job_id)
