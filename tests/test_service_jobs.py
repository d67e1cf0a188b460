"""The jobs API over the in-process queue (no Redis): 202 + Location, polling, result, cancel, failures.

Also the queue itself, driven without its runner so that jobs stay queued: the cap (503 with
Retry-After), cancel, deadline expiry, and the byte and record budgets, which drop only collected jobs.
"""

from __future__ import annotations

import asyncio
import time
import uuid

import httpx
import pytest
from service_support import corrupt_png, decoded, image_bytes, make_settings, metric, served

from service.errors import Unavailable
from service.inference import InferencePool
from service.jobs.inprocess import RECORDS_PER_SLOT, InProcessQueue
from service.jobs.model import JobRecord, JobState
from service.metrics import Metrics

pytestmark = pytest.mark.anyio
PNG = {"content-type": "image/png"}
CHEAP = "method=ssrno&tier=XS"


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


async def wait_ended(client: httpx.AsyncClient, location: str, timeout: float = 120.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        view = (await client.get(location)).json()
        if view["state"] not in ("queued", "running"):
            return view
        await asyncio.sleep(0.05)
    raise AssertionError(f"{location} did not end within {timeout} s")


async def test_async_request_is_a_job_with_location_progress_and_result() -> None:
    async with served(make_settings()) as (_, client):
        response = await client.post(
            f"/upscale?scale=2&async=true&{CHEAP}", content=image_bytes(8, 6), headers=PNG
        )
        assert response.status_code == 202, response.text
        location = response.headers["location"]
        queued = response.json()
        assert location == f"/jobs/{queued['id']}"
        assert int(response.headers["retry-after"]) >= 1
        assert queued["state"] in ("queued", "running") and (queued["method"], queued["tier"]) == (
            "ssrno",
            "XS",
        )
        assert (queued["output_width"], queued["output_height"]) == (16, 12)

        view = await wait_ended(client, location)
        assert view["state"] == "succeeded", view
        assert view["progress"] == 1.0 and view["attempts"] == 1 and view["error"] is None
        assert set(view["timings"]) >= {"wait", "compute", "encode", "total"}
        assert view["expires_at"] == pytest.approx(view["finished_at"] + 3600.0)
        result = await client.get(view["result_url"])
        assert result.status_code == 200 and result.headers["content-type"] == "image/png"
        assert decoded(result.content).size == (16, 12)
        assert result.headers["x-elasticsr-tier"] == "XS"

        text = (await client.get("/metrics")).text
        assert metric(text, "elasticsr_jobs_total", outcome="succeeded") == 1
        assert metric(text, "elasticsr_job_age_seconds_count") == 1
        assert metric(text, "elasticsr_worker_busy_seconds_total") > 0
        assert metric(text, "elasticsr_queue_depth") == 0
        assert metric(text, "elasticsr_requests_total", outcome="queued", code="queued") == 1

        again = await client.delete(location)  # it already ended
        assert again.status_code == 409 and again.json()["code"] == "job_finished"


async def test_outputs_over_the_sync_limit_are_queued_and_over_the_job_limit_refused() -> None:
    settings = make_settings(max_output_pixels=20 * 20, max_job_output_pixels=40 * 40)
    async with served(settings) as (_, client):
        small = await client.post(f"/upscale?scale=2&{CHEAP}", content=image_bytes(10, 10), headers=PNG)
        assert small.status_code == 200  # 20×20: answered now
        big = await client.post(f"/upscale?scale=3&{CHEAP}", content=image_bytes(10, 10), headers=PNG)
        assert big.status_code == 202  # 30×30: a job
        view = await wait_ended(client, big.headers["location"])
        assert view["state"] == "succeeded"
        assert decoded((await client.get(view["result_url"])).content).size == (30, 30)
        huge = await client.post(f"/upscale?scale=5&{CHEAP}", content=image_bytes(10, 10), headers=PNG)
        assert huge.status_code == 413 and huge.json()["code"] == "output_too_large"


async def test_poison_image_fails_its_job_and_the_next_job_runs() -> None:
    async with served(make_settings()) as (_, client):
        poison = await client.post(f"/upscale?scale=2&async=true&{CHEAP}", content=corrupt_png(), headers=PNG)
        assert poison.status_code == 202  # the header is fine: it is sized and queued
        view = await wait_ended(client, poison.headers["location"])
        assert view["state"] == "failed"
        assert view["error"]["code"] == "undecodable_image" and view["error"]["message"]
        result = await client.get(f"{poison.headers['location']}/result")
        assert result.status_code == 409 and result.json()["code"] == "job_not_succeeded"

        good = await client.post(f"/upscale?scale=2&async=true&{CHEAP}", content=image_bytes(), headers=PNG)
        assert (await wait_ended(client, good.headers["location"]))["state"] == "succeeded"


async def test_unknown_jobs_are_404_and_bad_async_requests_are_4xx() -> None:
    async with served(make_settings()) as (_, client):
        for response in (
            await client.get("/jobs/nope"),
            await client.get("/jobs/nope/result"),
            await client.delete("/jobs/nope"),
        ):
            assert response.status_code == 404 and response.json()["code"] == "job_not_found"
        response = await client.post("/upscale?scale=2&async=true", content=b"not an image", headers=PNG)
        assert response.status_code == 400 and response.json()["code"] == "undecodable_image"
        response = await client.post(
            f"/upscale?scale=2&async=true&deadline_ms=1e12&{CHEAP}", content=image_bytes(), headers=PNG
        )
        assert response.status_code == 422 and response.json()["code"] == "invalid_parameter"


# --- the in-process queue without its runner ------------------------------------------------------


def record(output_pixels: int = 16, deadline_s: float = 60.0, predicted: float = 2.0) -> JobRecord:
    now = time.time()
    return JobRecord(
        id=uuid.uuid4().hex,
        created_at=now,
        deadline_at=now + deadline_s,
        format="png",
        input_bytes=10,
        input_width=4,
        input_height=4,
        output_width=output_pixels,
        output_height=output_pixels,
        predicted_seconds=predicted,
    )


@pytest.fixture
def pool() -> InferencePool:
    pool = InferencePool(1, 1)
    yield pool
    pool.shutdown()


async def test_a_full_queue_refuses_with_retry_after_and_cancel_frees_a_place(pool: InferencePool) -> None:
    queue = InProcessQueue(make_settings(max_jobs=2), Metrics(), pool)
    first, second = record(predicted=3.0), record(predicted=4.0)
    await queue.submit(first, b"x" * 10)
    await queue.submit(second, b"x" * 10)
    with pytest.raises(Unavailable) as refused:
        await queue.submit(record(), b"x" * 10)
    assert refused.value.reason == "queue_full" and refused.value.headers()["Retry-After"] == "7"
    stats = await queue.stats()
    assert (stats.depth, stats.backlog_seconds) == (2, 7.0)

    cancelled = await queue.cancel(first.id)
    assert cancelled is not None and cancelled.state is JobState.CANCELLED
    assert await queue.claim(first.id, "w") is None  # a cancelled job never starts
    await queue.submit(record(), b"x" * 10)
    assert (await queue.stats()).depth == 2


async def test_overdue_queued_jobs_expire(pool: InferencePool) -> None:
    queue = InProcessQueue(make_settings(), Metrics(), pool)
    late = record(deadline_s=0.01)
    await queue.submit(late, b"x")
    await asyncio.sleep(0.02)
    await queue.sweep()
    expired = await queue.get(late.id)
    assert expired is not None and expired.state is JobState.EXPIRED
    assert expired.error_code == "deadline_expired"
    assert (await queue.stats()).depth == 0


async def finished(
    queue: InProcessQueue, state: JobState, result: bytes | None = None
) -> tuple[str, JobState]:
    """A job submitted, claimed and ended in `state` (its result stored if it succeeded)."""
    job = record()
    await queue.submit(job, b"i" * 10)
    claim = await queue.claim(job.id, "w")
    assert claim is not None
    fields = {"finished_at": time.time()}
    if state is not JobState.SUCCEEDED:
        fields.update(error_code="internal_error", error_message="boom")
    ended = await queue.finish(job.id, claim.attempt, state, fields, result)
    assert ended is not None
    return job.id, ended


async def test_the_byte_budget_drops_collected_results_only(pool: InferencePool) -> None:
    queue = InProcessQueue(make_settings(max_stored_bytes=100), Metrics(), pool)
    first, _ = await finished(queue, JobState.SUCCEEDED, b"r" * 40)
    second, _ = await finished(queue, JobState.SUCCEEDED, b"r" * 40)
    # No room for a third result, and nobody has collected the first two: they stay, and the
    # third job fails with a clear error rather than take another job's result away.
    third, state = await finished(queue, JobState.SUCCEEDED, b"r" * 40)
    assert state is JobState.FAILED
    failed = await queue.get(third)
    assert failed is not None and failed.error_code == "result_too_large"
    assert await queue.result(first) == b"r" * 40  # collected now ...
    fourth, state = await finished(queue, JobState.SUCCEEDED, b"r" * 40)
    assert state is JobState.SUCCEEDED  # ... so it made room for this one
    assert await queue.get(first) is None
    assert await queue.result(second) == b"r" * 40 and await queue.result(fourth) == b"r" * 40
    with pytest.raises(Unavailable):
        await queue.submit(record(), b"i" * 200)  # more than the whole budget


async def test_the_record_cap_refuses_new_jobs_while_ended_ones_are_uncollected(pool: InferencePool) -> None:
    """The slow test's failure: a cap of 16 records per queue slot dropped the oldest ended jobs
    while their clients were still polling, and those jobs read as unknown (404)."""
    queue = InProcessQueue(make_settings(max_jobs=1), Metrics(), pool)
    ended = [(await finished(queue, JobState.FAILED))[0] for _ in range(RECORDS_PER_SLOT)]
    with pytest.raises(Unavailable) as refused:
        await queue.submit(record(), b"x")
    assert refused.value.reason == "queue_full"
    for job_id in ended:  # all still there to be read ...
        view = await queue.get(job_id)
        assert view is not None and view.state is JobState.FAILED
    await queue.submit(record(), b"x")  # ... and, read, they make room
    assert await queue.get(ended[0]) is None and await queue.get(ended[1]) is not None
