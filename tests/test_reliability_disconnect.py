"""Clients that leave: mid-upload, while queued, while their job runs. Nothing may leak.

The app is driven with raw ASGI messages, so the test decides exactly when `http.disconnect`
arrives. Leak checks read every counter a stuck request would hold: the door's count, the
runtime's in-flight count, the pool's line and worker slots, and the in-flight gauge.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest
from fastapi import FastAPI
from service_support import image_bytes, make_settings, served
from test_reliability_limits import hold_inference, metric, until

pytestmark = pytest.mark.anyio
CHEAP = "scale=2&method=ssrno&tier=XS"


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


async def raw_post(app: FastAPI, query: str, body: bytes, declared: int, gone: asyncio.Event) -> list[dict]:
    """POST `body` (announcing `declared` bytes), then report a disconnect once `gone` is set."""
    scope: dict[str, Any] = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/upscale",
        "raw_path": b"/upscale",
        "query_string": query.encode(),
        "root_path": "",
        "headers": [(b"content-type", b"image/png"), (b"content-length", str(declared).encode())],
        "client": ("127.0.0.1", 40000),
        "server": ("testserver", 80),
    }
    pending = [{"type": "http.request", "body": body, "more_body": len(body) < declared}]
    sent: list[dict] = []

    async def receive() -> dict:
        if pending:
            return pending.pop(0)
        await gone.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        sent.append(message)

    await app(scope, receive, send)
    return sent


def assert_nothing_leaked(app: FastAPI) -> None:
    runtime = app.state.runtime
    assert app.state.guard.active == 0
    assert runtime.inflight == 0 and runtime.pool.queued == 0
    assert metric(app, "elasticsr_inflight_requests") == 0


async def test_disconnect_mid_upload_is_counted_not_an_error(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR)
    async with served(make_settings(methods=["ssrno"])) as (app, client):
        gone = asyncio.Event()
        gone.set()
        body = image_bytes(64, 64)
        sent = await raw_post(app, CHEAP, body[:100], declared=len(body), gone=gone)
        assert sent[0]["status"] == 499
        assert (
            metric(app, "elasticsr_requests_total", outcome="client_error", code="client_closed_request") == 1
        )
        assert metric(app, "elasticsr_requests_total", outcome="error", code="internal_error") == 0
        assert not [r for r in caplog.records if r.levelno >= logging.ERROR]  # no "unhandled error"
        assert_nothing_leaked(app)
        assert (
            await client.post(f"/upscale?{CHEAP}", content=body, headers={"content-type": "image/png"})
        ).is_success


async def test_disconnect_while_queued_or_running_frees_everything() -> None:
    async with served(make_settings(methods=["ssrno"])) as (app, client):
        pool = app.state.runtime.pool
        release, started = hold_inference(app)
        body = image_bytes(8, 8)
        gone_running, gone_queued = asyncio.Event(), asyncio.Event()
        running = asyncio.ensure_future(raw_post(app, CHEAP, body, len(body), gone_running))
        await until(lambda: len(started) == 1)
        queued = asyncio.ensure_future(raw_post(app, CHEAP, body, len(body), gone_queued))
        await until(lambda: pool.queued == 1)

        gone_queued.set()  # the waiting job is abandoned: it never reaches a worker
        assert (await asyncio.wait_for(queued, 10))[0]["status"] == 499
        assert pool.queued == 0 and len(started) == 1

        gone_running.set()  # the handler returns at once; the worker cannot be interrupted ...
        assert (await asyncio.wait_for(running, 10))[0]["status"] == 499
        assert pool.running == 1 and pool.free_slots == 0  # ... so it keeps its slot until done
        assert app.state.runtime.inflight == 0 and app.state.guard.active == 0

        release.set()
        await until(lambda: pool.running == 0 and pool.free_slots == pool.workers)
        assert_nothing_leaked(app)
        assert (
            metric(app, "elasticsr_requests_total", outcome="client_error", code="client_closed_request") == 2
        )
        after = await client.post(f"/upscale?{CHEAP}", content=body, headers={"content-type": "image/png"})
        assert after.status_code == 200 and len(started) == 2  # the abandoned job never ran
