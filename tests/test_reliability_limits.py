"""Limits that are configuration: API keys, per-client rate limit, concurrent requests (in-process ASGI).

A job is held on its worker with an Event (the real model still runs once it is let go), so the
tests about requests in flight do not depend on how fast this machine is.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from service_support import image_bytes, make_settings, served

from service.guard import TokenBuckets, client_address, presented_key
from service.settings import Settings

pytestmark = pytest.mark.anyio
PNG = {"content-type": "image/png"}
CHEAP = "scale=2&method=ssrno&tier=XS"
KEYS = ["k-alpha-7f3a9c", "k-beta-51e0d2"]


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


def hold_inference(app: FastAPI) -> tuple[threading.Event, list[int]]:
    """Make every inference wait for the returned Event; the list counts inferences started."""
    runtime = app.state.runtime
    release, started = threading.Event(), []
    real: Callable[..., Any] = runtime.infer

    def held(*args: Any) -> Any:
        started.append(1)
        release.wait(30)
        return real(*args)

    runtime.infer = held
    return release, started


async def until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    async def poll() -> None:
        while not condition():
            await asyncio.sleep(0.01)

    await asyncio.wait_for(poll(), timeout)


def metric(app: FastAPI, name: str, **labels: str) -> float:
    value = app.state.metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


# --- API keys --------------------------------------------------------------------------------


async def test_api_keys_401_403_and_both_ways_of_sending_one(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    settings = make_settings(methods=["ssrno"], api_keys=KEYS)
    async with served(settings) as (app, client):
        body = image_bytes(8, 8)
        missing = await client.post(f"/upscale?{CHEAP}", content=body, headers=PNG)
        assert missing.status_code == 401 and missing.json()["code"] == "missing_api_key"
        assert missing.headers["www-authenticate"].startswith("Bearer")
        wrong = await client.post(f"/upscale?{CHEAP}", content=body, headers={**PNG, "x-api-key": "nope"})
        assert wrong.status_code == 403 and wrong.json()["code"] == "invalid_api_key"
        # A valid key with the wrong scheme is not accepted either.
        basic = {**PNG, "authorization": f"Basic {KEYS[0]}"}
        assert (await client.post(f"/upscale?{CHEAP}", content=body, headers=basic)).status_code == 401
        assert (await client.get("/models")).status_code == 401
        assert (await client.get("/jobs/anything")).status_code == 401  # job status and results too
        assert (await client.delete("/jobs/anything", headers={"x-api-key": "nope"})).status_code == 403
        for headers in ({"x-api-key": KEYS[0]}, {"authorization": f"Bearer {KEYS[1]}"}):
            response = await client.post(f"/upscale?{CHEAP}", content=body, headers={**PNG, **headers})
            assert response.status_code == 200, response.text
            assert (await client.get("/models", headers=headers)).status_code == 200
            assert (await client.get("/jobs/anything", headers=headers)).status_code == 404
        for open_path in ("/healthz", "/readyz", "/metrics", "/openapi.json"):
            assert (await client.get(open_path)).status_code == 200, open_path
        assert metric(app, "elasticsr_requests_total", outcome="client_error", code="missing_api_key") == 2
        assert metric(app, "elasticsr_requests_total", outcome="client_error", code="invalid_api_key") == 1
        exposition = (await client.get("/metrics")).text
    logged = "\n".join(r.getMessage() for r in caplog.records) + caplog.text
    assert "invalid_api_key" in logged  # refusals are logged ...
    for key in KEYS:  # ... but never a key, nor in the metrics or the settings' repr
        assert key not in logged and key not in exposition
        assert key not in repr(settings) and key not in str(settings.model_dump())


def test_api_keys_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ELASTICSR_API_KEYS", f" {KEYS[0]} ,{KEYS[1]},")
    settings = Settings()
    assert [k.get_secret_value() for k in settings.api_keys] == KEYS
    assert KEYS[0] not in repr(settings)


def test_key_and_address_extraction() -> None:
    def scope(*headers: tuple[bytes, bytes]) -> dict:
        return {"headers": list(headers), "client": ("10.0.0.9", 5000)}

    assert presented_key(scope((b"x-api-key", b" k1 "))) == "k1"
    assert presented_key(scope((b"authorization", b"Bearer k2"))) == "k2"
    assert presented_key(scope((b"authorization", b"Basic k2"))) is None
    assert presented_key(scope((b"authorization", b"Bearer "))) is None
    forwarded = scope((b"x-forwarded-for", b"6.6.6.6, 203.0.113.5"))
    assert client_address(forwarded, trust_forwarded_for=False) == "10.0.0.9"  # spoofable: ignored
    assert client_address(forwarded, trust_forwarded_for=True) == "203.0.113.5"  # our proxy's entry
    assert client_address(scope(), trust_forwarded_for=True) == "10.0.0.9"


# --- rate limit --------------------------------------------------------------------------------


def test_token_bucket_refills_at_the_rate_and_forgets_idle_clients() -> None:
    now = [0.0]
    buckets = TokenBuckets(rate=2.0, burst=3, max_clients=2, clock=lambda: now[0])
    assert [buckets.take("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert buckets.take("a") == pytest.approx(0.5)  # empty: the next token is due in 1/rate
    now[0] += 0.5
    assert buckets.take("a") == 0.0
    assert buckets.take("b") == 0.0 and buckets.take("c") == 0.0
    assert len(buckets) == 2  # "a" (least recently seen) was forgotten: memory stays bounded
    assert buckets.take("a") == 0.0  # and comes back with a full bucket


async def test_rate_limit_is_per_client_with_retry_after() -> None:
    settings = make_settings(
        methods=["ssrno"], rate_limit_per_s=0.5, rate_limit_burst=2, trust_forwarded_for=True
    )
    async with served(settings) as (app, client):
        body = image_bytes(8, 8)

        async def send(ip: str) -> httpx.Response:
            headers = {**PNG, "x-forwarded-for": ip}
            return await client.post(f"/upscale?{CHEAP}", content=body, headers=headers)

        assert [(await send("198.51.100.1")).status_code for _ in range(2)] == [200, 200]
        limited = await send("198.51.100.1")
        assert limited.status_code == 429 and limited.json()["code"] == "rate_limited"
        assert int(limited.headers["retry-after"]) >= 1
        assert (await send("198.51.100.2")).status_code == 200  # another client has its own bucket
        assert (await client.get("/healthz")).status_code == 200  # probes are never limited
        assert metric(app, "elasticsr_requests_total", outcome="client_error", code="rate_limited") == 1


async def test_rate_limit_ignores_forwarded_for_unless_trusted() -> None:
    settings = make_settings(methods=["ssrno"], rate_limit_per_s=0.5, rate_limit_burst=1)
    async with served(settings) as (_, client):
        statuses = [
            (await client.get("/models", headers={"x-forwarded-for": f"192.0.2.{i}"})).status_code
            for i in range(3)
        ]
        assert statuses == [200, 429, 429]  # one peer address, whatever the header claims


async def test_rate_limit_follows_the_key_not_the_address() -> None:
    settings = make_settings(methods=["ssrno"], api_keys=KEYS, rate_limit_per_s=0.5, rate_limit_burst=1)
    async with served(settings) as (_, client):
        first = await client.get("/models", headers={"x-api-key": KEYS[0]})
        again = await client.get("/models", headers={"x-api-key": KEYS[0]})
        other = await client.get("/models", headers={"x-api-key": KEYS[1]})
        assert (first.status_code, again.status_code, other.status_code) == (200, 429, 200)
        # Key guessing from one address is throttled like anything else.
        guesses = [(await client.get("/models", headers={"x-api-key": "g"})).status_code for _ in range(2)]
        assert guesses == [403, 429]


# --- concurrency -------------------------------------------------------------------------------


async def test_concurrent_request_cap_sheds_at_the_door_and_frees_its_slots() -> None:
    settings = make_settings(methods=["ssrno"], max_concurrent_requests=2)
    async with served(settings) as (app, client):
        release, started = hold_inference(app)
        body = image_bytes(8, 8)
        first = asyncio.ensure_future(client.post(f"/upscale?{CHEAP}", content=body, headers=PNG))
        second = asyncio.ensure_future(client.post(f"/upscale?{CHEAP}", content=body, headers=PNG))
        await until(lambda: app.state.guard.active == 2 and len(started) == 1)
        shed = await client.post(f"/upscale?{CHEAP}", content=body, headers=PNG)
        assert shed.status_code == 503 and shed.json()["code"] == "overloaded"
        assert shed.json()["detail"]["reason"] == "concurrency" and shed.headers["retry-after"] == "1"
        assert (await client.get("/models")).status_code == 200  # only /upscale is capped
        release.set()
        assert [(await first).status_code, (await second).status_code] == [200, 200]
        assert app.state.guard.active == 0 and app.state.runtime.inflight == 0
        assert metric(app, "elasticsr_shed_requests_total", reason="concurrency") == 1
        assert (await client.post(f"/upscale?{CHEAP}", content=body, headers=PNG)).status_code == 200
