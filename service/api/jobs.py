"""GET /jobs/{id}, GET /jobs/{id}/result, DELETE /jobs/{id}: follow, fetch and cancel queued jobs.

Jobs are created by POST /upscale (202 + Location) when the output is over the sync limit or the
client asks `?async=true`. Records and results are dropped `result_ttl_s` after the job ended.
"""

from __future__ import annotations

import time
from typing import Annotated

from fastapi import APIRouter, Depends, Response

from service.api.deps import get_jobs, get_settings
from service.errors import Conflict, ErrorBody, NotFound
from service.imaging import FORMATS
from service.jobs.base import JobQueue
from service.jobs.model import JobRecord, JobState, JobView
from service.settings import Settings

router = APIRouter(tags=["jobs"])

_NOT_FOUND = {404: {"model": ErrorBody, "description": "job_not_found: unknown, or expired"}}


async def _record(jobs: JobQueue, job_id: str) -> JobRecord:
    record = await jobs.get(job_id)
    if record is None:
        raise NotFound(f"no job {job_id!r} (unknown, or its record expired)", code="job_not_found")
    return record


def _retry_after(record: JobRecord) -> float:
    """A polling hint: the predicted compute left, at least a second."""
    left = record.predicted_seconds or 1.0
    if record.compute_started_at is not None:
        left -= time.time() - record.compute_started_at
    return max(1.0, left)


@router.get(
    "/jobs/{job_id}",
    summary="A job's state, progress, chosen method/tier, timings and error",
    responses=_NOT_FOUND,
)
async def get_job(
    job_id: str,
    jobs: Annotated[JobQueue, Depends(get_jobs)],
    settings: Annotated[Settings, Depends(get_settings)],
) -> JobView:
    return JobView.of(await _record(jobs, job_id), settings.result_ttl_s)


@router.get(
    "/jobs/{job_id}/result",
    summary="The upscaled image of a succeeded job",
    response_class=Response,
    responses={
        200: {"content": {media: {} for _, media in FORMATS.values()}, "description": "The image."},
        409: {"model": ErrorBody, "description": "job_not_ready (Retry-After), job_not_succeeded"},
        **_NOT_FOUND,
    },
)
async def get_result(job_id: str, jobs: Annotated[JobQueue, Depends(get_jobs)]) -> Response:
    record = await _record(jobs, job_id)
    if not record.state.terminal:
        raise Conflict(
            f"job {job_id} is {record.state.value}", code="job_not_ready", retry_after_s=_retry_after(record)
        )
    if record.state is not JobState.SUCCEEDED:
        raise Conflict(
            f"job {job_id} ended {record.state.value}: {record.error_message or ''}".rstrip(": "),
            code="job_not_succeeded",
            detail={"state": record.state.value, "error_code": record.error_code},
        )
    body = await jobs.result(job_id)
    if body is None:
        raise NotFound(f"the result of job {job_id} has expired", code="job_not_found")
    headers = {
        "X-ElasticSR-Method": record.method or "",
        "X-ElasticSR-Tier": record.tier or "",
        "X-ElasticSR-Output-Size": f"{record.output_width}x{record.output_height}",
    }
    if record.predicted_psnr_db is not None:
        headers["X-ElasticSR-Predicted-PSNR"] = f"{record.predicted_psnr_db:.2f}"
    return Response(body, media_type=FORMATS[record.format][1], headers=headers)


@router.delete(
    "/jobs/{job_id}",
    summary="Cancel a job: a queued one at once, a running one at its next step",
    responses={409: {"model": ErrorBody, "description": "job_finished: it already ended"}, **_NOT_FOUND},
)
async def cancel_job(
    job_id: str,
    jobs: Annotated[JobQueue, Depends(get_jobs)],
    settings: Annotated[Settings, Depends(get_settings)],
) -> JobView:
    await _record(jobs, job_id)
    record = await jobs.cancel(job_id)
    if record is None:
        raise NotFound(f"no job {job_id!r} (unknown, or its record expired)", code="job_not_found")
    if record.state.terminal and record.state is not JobState.CANCELLED:
        raise Conflict(f"job {job_id} already ended {record.state.value}", code="job_finished")
    return JobView.of(record, settings.result_ttl_s)
