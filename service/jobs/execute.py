"""Running one job — the same pipeline as a sync request, against the job's own deadline.

Claim (fenced by an attempt number) → decode → the controller chooses with the time left before the
deadline and this process's load → infer on the pool → encode → store the result with a
compare-and-set. Any error ends the job with a clear code instead of reaching the worker loop, so
a poison image fails its job and the worker takes the next one. Both backends run jobs through
this class: the in-process queue inside the API, the Redis backend in `python -m service.worker`.
"""

from __future__ import annotations

import logging
import time

import anyio

from service.controller import Decision
from service.errors import ServiceError
from service.imaging import decode
from service.jobs.base import Claim, JobQueue
from service.jobs.model import JobState, Stage
from service.pipeline import render
from service.runtime import Runtime
from service.sizing import OutputSize

log = logging.getLogger(__name__)


class JobStopped(Exception):
    """A cancel was asked, or this attempt lost the job to another worker."""


def outcome_of(exc: ServiceError) -> tuple[JobState, str]:
    """A job that cannot finish before its deadline expired; anything else it could not do failed."""
    if exc.code in ("deadline_expired", "deadline_unachievable") or getattr(exc, "reason", "") == "deadline":
        return JobState.EXPIRED, "deadline_expired"
    return JobState.FAILED, exc.code


class JobExecutor:
    """Runs claimed jobs on a runtime (models, latency model, inference pool) for one queue."""

    def __init__(self, runtime: Runtime, queue: JobQueue, worker: str) -> None:
        self.runtime = runtime
        self.queue = queue
        self.worker = worker

    async def run(self, job_id: str) -> JobState | None:
        """Claim and run a job; the state it ended in, or None if there was nothing (left) to do."""
        claim = await self.queue.claim(job_id, self.worker)
        if claim is None:
            return None
        metrics, record = self.runtime.metrics, claim.record
        if claim.attempt == 1:
            metrics.job_age.observe(max(0.0, (record.started_at or time.time()) - record.created_at))
        else:  # its previous worker was lost (killed, or stopped before finishing it)
            metrics.jobs.labels("retried").inc()
            log.warning("job %s: attempt %d after a lost worker", record.id, claim.attempt)
        started = time.monotonic()
        try:
            return await self._run(claim)
        finally:
            metrics.worker_busy.inc(time.monotonic() - started)

    async def _run(self, claim: Claim) -> JobState | None:
        record, attempt, queue = claim.record, claim.attempt, self.queue
        settings = self.runtime.settings

        async def end(state: JobState, result: bytes | None = None, **fields: object) -> JobState | None:
            fields.update(stage=Stage.DONE.value, finished_at=time.time())
            final = await queue.finish(record.id, attempt, state, fields, result)
            log.info("job %s (attempt %d): %s", record.id, attempt, final.value if final else "lost")
            return final

        async def chosen(decision: Decision) -> None:
            c = decision.candidate
            assert c is not None
            fields = {
                "stage": Stage.COMPUTING.value,
                "method": c.method,
                "tier": c.tier,
                "predicted_psnr_db": c.predicted_psnr_db,
                "predicted_seconds": decision.compute_seconds,
                "compute_started_at": time.time(),
            }
            if not await queue.update(record.id, attempt, fields):
                raise JobStopped

        try:
            if time.time() >= record.deadline_at:
                return await end(
                    JobState.EXPIRED,
                    error_code="deadline_expired",
                    error_message="the deadline passed while the job waited in the queue",
                )
            if not await queue.update(record.id, attempt, {"stage": Stage.DECODING.value}):
                raise JobStopped
            image = await anyio.to_thread.run_sync(decode, claim.data, settings.max_input_pixels)
            out = OutputSize(
                height=record.output_height,
                width=record.output_width,
                scale_y=record.output_height / image.height,
                scale_x=record.output_width / image.width,
            )
            rendered = await render(
                self.runtime,
                image,
                out,
                record.spec,
                record.deadline_at - time.time(),
                self.runtime.snapshot(),
                remember=False,
                on_chosen=chosen,
            )
            if len(rendered.body) > settings.max_result_bytes:
                return await end(
                    JobState.FAILED,
                    error_code="result_too_large",
                    error_message=f"the encoded result has {len(rendered.body)} bytes, more than "
                    f"ELASTICSR_MAX_RESULT_BYTES={settings.max_result_bytes}; ask for JPEG or a smaller size",
                )
            return await end(
                JobState.SUCCEEDED,
                result=rendered.body,
                result_bytes=len(rendered.body),
                queue_seconds=rendered.queue_seconds,
                compute_seconds=rendered.compute_seconds,
                encode_seconds=rendered.encode_seconds,
            )
        except JobStopped:
            return await end(
                JobState.CANCELLED, error_code="cancelled", error_message="cancelled by the client"
            )
        except ServiceError as exc:
            state, code = outcome_of(exc)
            return await end(state, error_code=code, error_message=exc.message)
        except Exception as exc:  # a bug or a model failure: fail this job, keep the worker serving
            log.exception("job %s failed", record.id)
            return await end(
                JobState.FAILED, error_code="internal_error", error_message=f"{type(exc).__name__}: {exc}"
            )
