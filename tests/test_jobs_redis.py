"""The Redis backend's guarantees, against a real `redis-server` and real `python -m service.worker`s.

Each test starts its own redis-server (AOF on, fsync always) on a free port in a temporary folder,
the API in-process (ASGI) and workers as subprocesses on the small untrained test checkpoints.
Skipped only when redis-server is not installed (CI installs it: .ci/run).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
import redis
from live_server import live_server
from overload import assert_jobs_contract, overload_seconds, run_jobs_overload
from service_support import checkpoint_dir, corrupt_png, decoded, image_bytes, make_settings, metric, served

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server is not installed"),
]
ROOT = Path(__file__).resolve().parent.parent
PNG = {"content-type": "image/png"}
CHEAP = "method=ssrno&tier=XS"
LEASE_S = 1.5  # short, so a lost worker's job is retried within seconds


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisServer:
    """A redis-server of our own: append-only file fsynced on every write, no RDB snapshots."""

    def __init__(self, folder: Path) -> None:
        self.folder, self.port = folder, free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        args = ["--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.folder)]
        args += ["--appendonly", "yes", "--appendfsync", "always", "--save", ""]
        self.process = subprocess.Popen(["redis-server", *args], stdout=subprocess.DEVNULL)
        client = redis.Redis(port=self.port)
        for _ in range(200):
            with contextlib.suppress(redis.ConnectionError):
                if client.ping():
                    return
            time.sleep(0.02)
        raise RuntimeError("redis-server did not start")

    def kill(self) -> None:
        assert self.process is not None
        self.process.kill()  # SIGKILL: no chance to save anything beyond the AOF
        self.process.wait()

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, decode_responses=True)


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path)
    server.start()
    yield server
    with contextlib.suppress(Exception):
        server.kill()


class WorkerProcess:
    """`python -m service.worker` with the test checkpoints; its log is kept for failure reports."""

    def __init__(self, url: str, folder: Path, name: str) -> None:
        self.metrics_port = free_port()
        self.log = folder / f"worker-{name}.log"
        env = {
            **os.environ,
            "ELASTICSR_REDIS_URL": url,
            "ELASTICSR_CHECKPOINT_DIR": str(checkpoint_dir()),
            "ELASTICSR_METHODS": "ssrno",
            "ELASTICSR_DEVICE": "cpu",
            "ELASTICSR_WARMUP": "false",
            "ELASTICSR_TORCH_THREADS": "1",
            "ELASTICSR_WORKER_METRICS_PORT": str(self.metrics_port),
            "ELASTICSR_JOB_LEASE_S": str(LEASE_S),
            "ELASTICSR_LOG_LEVEL": "info",
        }
        with self.log.open("w") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "service.worker"], cwd=ROOT, env=env, stdout=out, stderr=out
            )

    @property
    def name_suffix(self) -> str:
        return f":{self.process.pid}"

    async def ready(self, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        async with httpx.AsyncClient() as client:
            while time.monotonic() < deadline:
                assert self.process.poll() is None, self.log.read_text()
                with contextlib.suppress(httpx.HTTPError):
                    if (await client.get(f"http://127.0.0.1:{self.metrics_port}/readyz")).status_code == 200:
                        return
                await asyncio.sleep(0.1)
        raise AssertionError(f"worker not ready:\n{self.log.read_text()}")

    async def metrics(self) -> str:
        async with httpx.AsyncClient() as client:
            return (await client.get(f"http://127.0.0.1:{self.metrics_port}/metrics")).text

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()


@pytest.fixture
def workers(redis_server: RedisServer, tmp_path: Path) -> Iterator[list[WorkerProcess]]:
    """Start workers with `start(name)`; all are killed at the end."""
    started: list[WorkerProcess] = []
    yield started
    for worker in started:
        worker.stop()


def start_worker(
    redis_server: RedisServer, tmp_path: Path, started: list[WorkerProcess], name: str
) -> WorkerProcess:
    worker = WorkerProcess(redis_server.url, tmp_path, name)
    started.append(worker)
    return worker


@contextlib.asynccontextmanager
async def api(redis_server: RedisServer, **overrides) -> AsyncIterator[httpx.AsyncClient]:
    settings = make_settings(redis_url=redis_server.url, methods=["ssrno"], job_lease_s=LEASE_S, **overrides)
    async with served(settings) as (_, client):
        yield client


async def poll(client: httpx.AsyncClient, location: str, until, timeout: float = 120.0) -> dict:
    """GET the job until `until(view)`; a 503 while Redis restarts is retried."""
    deadline = time.monotonic() + timeout
    view: dict = {}
    while time.monotonic() < deadline:
        response = await client.get(location)
        if response.status_code == 200:
            view = response.json()
            if until(view):
                return view
        else:
            assert response.status_code == 503, response.text
        await asyncio.sleep(0.02)
    raise AssertionError(f"{location}: gave up waiting, last view {view}")


def ended(view: dict) -> bool:
    return view["state"] not in ("queued", "running")


async def submit(client: httpx.AsyncClient, body: bytes, query: str = f"scale=2&{CHEAP}") -> str:
    response = await client.post(f"/upscale?async=true&{query}", content=body, headers=PNG)
    assert response.status_code == 202, response.text
    return response.headers["location"]


async def test_queue_full_is_503_with_retry_after(redis_server: RedisServer) -> None:
    async with api(redis_server, max_jobs=2) as client:
        first = await submit(client, image_bytes())
        await submit(client, image_bytes())
        refused = await client.post(
            f"/upscale?async=true&scale=2&{CHEAP}", content=image_bytes(), headers=PNG
        )
        assert refused.status_code == 503
        assert refused.json()["code"] == "overloaded" and refused.json()["detail"]["reason"] == "queue_full"
        assert int(refused.headers["retry-after"]) >= 1
        text = (await client.get("/metrics")).text
        assert metric(text, "elasticsr_shed_requests_total", reason="queue_full") == 1

        deadline = time.monotonic() + 10  # the maintenance loop publishes the shared depth
        while metric((await client.get("/metrics")).text, "elasticsr_queue_depth") != 2:
            assert time.monotonic() < deadline, "elasticsr_queue_depth never showed the 2 waiting jobs"
            await asyncio.sleep(0.1)

        cancelled = await client.delete(first)  # a cancelled job frees its place at once
        assert cancelled.status_code == 200 and cancelled.json()["state"] == "cancelled"
        await submit(client, image_bytes())


async def test_queued_jobs_survive_a_redis_restart(
    redis_server: RedisServer, workers: list[WorkerProcess], tmp_path: Path
) -> None:
    async with api(redis_server) as client:
        locations = [await submit(client, image_bytes(8, 8)), await submit(client, image_bytes(6, 10))]
        redis_server.kill()
        redis_server.start()  # same folder: it replays the append-only file
        for location in locations:
            view = await poll(client, location, lambda v: True)
            assert view["state"] == "queued"
        worker = start_worker(redis_server, tmp_path, workers, "after-restart")
        await worker.ready()
        sizes = []
        for location in locations:
            view = await poll(client, location, ended)
            assert view["state"] == "succeeded", view
            sizes.append(decoded((await client.get(view["result_url"])).content).size)
        assert sizes == [(16, 16), (12, 20)]


async def test_sigkilled_worker_job_is_retried_by_another_and_completes_once(
    redis_server: RedisServer, workers: list[WorkerProcess], tmp_path: Path
) -> None:
    first = start_worker(redis_server, tmp_path, workers, "killed")
    async with api(redis_server) as client:
        await first.ready()
        # 32×32 → 320×320 with the cheapest tier: long enough (seconds) to be killed mid-compute.
        location = await submit(client, image_bytes(32, 32), f"width=320&{CHEAP}")
        view = await poll(client, location, lambda v: v["stage"] == "computing" or ended(v))
        assert view["state"] == "running", view
        job_id = view["id"]
        assert redis_server.client().hget(f"elasticsr:job:{job_id}", "worker").endswith(first.name_suffix)
        first.process.send_signal(signal.SIGKILL)
        first.process.wait()

        second = start_worker(redis_server, tmp_path, workers, "second")
        await second.ready()
        view = await poll(client, location, ended)
        assert view["state"] == "succeeded", (view, second.log.read_text())
        assert view["attempts"] == 2  # the killed start, then this one
        result = await client.get(view["result_url"])
        assert decoded(result.content).size == (320, 320)

        store = redis_server.client()
        assert store.hget(f"elasticsr:job:{job_id}", "worker").endswith(second.name_suffix)
        assert store.hget(f"elasticsr:job:{job_id}", "ends") == "1"  # one terminal write
        await asyncio.sleep(3 * LEASE_S)  # nothing is left to deliver it a third time
        assert store.zcard("arq:queue") == 0 and store.zcard("elasticsr:running") == 0
        assert (await client.get(location)).json()["attempts"] == 2
        text = await second.metrics()
        assert metric(text, "elasticsr_jobs_total", outcome="retried") == 1
        assert metric(text, "elasticsr_jobs_total", outcome="succeeded") == 1
        assert metric(text, "elasticsr_worker_busy_seconds_total") > 0


async def test_poison_image_fails_its_job_and_the_worker_keeps_serving(
    redis_server: RedisServer, workers: list[WorkerProcess], tmp_path: Path
) -> None:
    worker = start_worker(redis_server, tmp_path, workers, "poison")
    async with api(redis_server) as client:
        await worker.ready()
        poison = await poll(client, await submit(client, corrupt_png()), ended)
        assert poison["state"] == "failed" and poison["attempts"] == 1
        assert poison["error"]["code"] == "undecodable_image" and "image" in poison["error"]["message"]
        good = await poll(client, await submit(client, image_bytes()), ended)
        assert good["state"] == "succeeded"
        assert worker.process.poll() is None
        text = await worker.metrics()
        assert metric(text, "elasticsr_jobs_total", outcome="failed") == 1
        assert metric(text, "elasticsr_jobs_total", outcome="succeeded") == 1


async def test_sigterm_lets_the_worker_finish_its_job_then_exit(
    redis_server: RedisServer, workers: list[WorkerProcess], tmp_path: Path
) -> None:
    worker = start_worker(redis_server, tmp_path, workers, "sigterm")
    async with api(redis_server) as client:
        await worker.ready()
        location = await submit(client, image_bytes(32, 32), f"width=320&{CHEAP}")
        running = await poll(client, location, lambda v: v["stage"] == "computing" or ended(v))
        assert running["state"] == "running"
        worker.process.send_signal(signal.SIGTERM)
        assert worker.process.wait(timeout=120) == 0, worker.log.read_text()
        view = (await client.get(location)).json()
        assert view["state"] == "succeeded" and view["attempts"] == 1, view


async def test_redis_away_at_start_and_mid_run_only_async_suffers_and_it_recovers(tmp_path: Path) -> None:
    server = RedisServer(tmp_path)  # not started yet: the API must come up without it

    async def sync_ok(client: httpx.AsyncClient) -> None:
        response = await client.post(f"/upscale?scale=2&{CHEAP}", content=image_bytes(8, 8), headers=PNG)
        assert response.status_code == 200, response.text
        assert decoded(response.content).size == (16, 16)

    async def async_refused(client: httpx.AsyncClient) -> None:
        response = await client.post(
            f"/upscale?async=true&scale=2&{CHEAP}", content=image_bytes(8, 8), headers=PNG
        )
        assert response.status_code == 503, response.text
        assert response.json()["code"] == "queue_unavailable"
        assert int(response.headers["retry-after"]) >= 1

    try:
        async with api(server) as client:
            await sync_ok(client)
            await async_refused(client)

            server.start()  # Redis arrives: async requests are accepted, no restart of the API
            location = await submit(client, image_bytes(8, 8))
            assert (await client.get(location)).json()["state"] == "queued"

            server.kill()  # Redis goes away mid-run
            await sync_ok(client)
            await async_refused(client)
            assert (await client.get(location)).status_code == 503

            server.start()  # back, from its append-only file: the accepted job is still there
            view = await poll(client, location, lambda v: True)
            assert view["state"] == "queued"
            await submit(client, image_bytes(6, 6))
    finally:
        if server.process is not None and server.process.poll() is None:
            server.kill()


@pytest.mark.slow
@pytest.mark.timeout(900)
async def test_jobs_at_five_times_capacity_with_a_worker_killed_none_lost(
    redis_server: RedisServer, workers: list[WorkerProcess], tmp_path: Path
) -> None:
    """Open-loop async jobs at 5× capacity for ELASTICSR_OVERLOAD_SECONDS (60) against a uvicorn API
    and two workers; one worker is SIGKILLed halfway and replaced. Every accepted job must end."""
    seconds = overload_seconds()
    first, second = (start_worker(redis_server, tmp_path, workers, n) for n in ("a", "b"))
    await asyncio.gather(first.ready(), second.ready())

    async def kill_and_replace() -> None:
        await asyncio.sleep(seconds / 2)
        first.process.kill()
        await start_worker(redis_server, tmp_path, workers, "c").ready()

    with live_server(redis_url=redis_server.url, job_lease_s=str(LEASE_S), max_jobs="32") as server:
        chaos = asyncio.ensure_future(kill_and_replace())
        report, figures = await asyncio.to_thread(run_jobs_overload, server, seconds)
        await chaos
    texts = [await w.metrics() for w in workers[1:]]  # the survivors
    retried = sum(metric(text, "elasticsr_jobs_total", outcome="retried") for text in texts)
    print(
        json.dumps(
            {
                "redis_jobs_overload_seconds": seconds,
                "worker_killed": True,
                **figures,
                "retried_by_survivors": retried,
            }
        )
    )
    assert_jobs_contract(report, figures)
