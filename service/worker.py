"""`python -m service.worker`: render queued jobs from Redis, scaled apart from the API pods.

One process: the same Runtime as the API (models, latency model, inference pool, load sampler),
an arq worker taking jobs from `ELASTICSR_REDIS_URL`, a heartbeat that keeps this worker's jobs
leased (see service/jobs/redisqueue.py), the queue maintenance loop (expiry and the
`elasticsr_queue_depth` gauge), and /healthz, /readyz, /metrics on `ELASTICSR_WORKER_METRICS_PORT`.
On SIGTERM it takes no new job, finishes the one it holds (up to `max_job_deadline_ms`) and exits;
SIGKILL loses nothing either: the job's lease runs out and another worker retries it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import Iterator
from typing import Any

import uvicorn
from arq.worker import Worker, func
from fastapi import FastAPI

from service.api import ops
from service.jobs.base import maintain_forever
from service.jobs.execute import JobExecutor
from service.jobs.redisqueue import JOB_FUNCTION, RedisQueue
from service.metrics import Metrics
from service.runtime import Runtime
from service.settings import Settings

log = logging.getLogger(__name__)


async def render_job(ctx: dict[str, Any], job_id: str) -> str | None:
    """The arq job: lease it at once (arq's own lease is the whole timeout), then run it."""
    queue: RedisQueue = ctx["queue"]
    held: set[str] = ctx["held"]
    held.add(job_id)
    try:
        await queue.heartbeat(ctx["name"], [job_id])
        state = await ctx["executor"].run(job_id)
        return state.value if state is not None else None
    finally:
        held.discard(job_id)


async def heartbeat_forever(queue: RedisQueue, name: str, held: set[str], interval_s: float) -> None:
    while True:
        try:
            await queue.heartbeat(name, sorted(held))
        except Exception as exc:  # Redis away: the next beat may still come within the lease
            log.warning("heartbeat failed: %s", exc)
        await asyncio.sleep(interval_s)


class _QuietServer(uvicorn.Server):
    """uvicorn for /metrics and probes only: signals belong to the arq worker."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def ops_app(settings: Settings, metrics: Metrics, runtime: Runtime) -> FastAPI:
    app = FastAPI(title="ElasticSR worker", docs_url=None, redoc_url=None)
    app.state.settings, app.state.metrics, app.state.runtime = settings, metrics, runtime
    app.include_router(ops.router)
    return app


async def serve(settings: Settings) -> None:
    metrics = Metrics()
    runtime = Runtime(settings, metrics)
    name = f"{socket.gethostname()}:{os.getpid()}"
    queue = await RedisQueue.connect(settings, metrics)
    background: list[asyncio.Task[None]] = []
    if settings.worker_metrics_port:
        config = uvicorn.Config(
            ops_app(settings, metrics, runtime),
            host=settings.host,
            port=settings.worker_metrics_port,
            log_level="warning",
        )
        background.append(asyncio.create_task(_QuietServer(config).serve()))
    background.append(asyncio.create_task(runtime.sample_forever()))
    try:
        await runtime.start()
        if not runtime.ready:
            raise SystemExit(f"no model could be loaded: {runtime.failures}")
        held: set[str] = set()
        interval = settings.job_lease_s / 3
        background.append(asyncio.create_task(heartbeat_forever(queue, name, held, interval)))
        background.append(asyncio.create_task(maintain_forever(queue, metrics, interval)))
        longest_s = settings.max_job_deadline_ms / 1000
        worker = Worker(
            [
                func(
                    render_job,
                    name=JOB_FUNCTION,
                    timeout=longest_s + 60,
                    max_tries=settings.job_max_attempts + 1,
                )
            ],
            redis_pool=queue.redis,
            ctx={"queue": queue, "executor": JobExecutor(runtime, queue, name), "held": held, "name": name},
            max_jobs=runtime.pool.workers,
            keep_result=0,  # the job record and result live in our own keys
            poll_delay=0.2,
            job_completion_wait=int(longest_s) + 1,  # SIGTERM: finish the job in hand
            health_check_interval=60,
        )
        log.info("worker %s taking jobs (%d at a time)", name, runtime.pool.workers)
        with contextlib.suppress(asyncio.CancelledError):
            await worker.async_run()
        log.info("worker %s stopped", name)
    finally:
        for task in background:
            task.cancel()
        await asyncio.gather(*background, return_exceptions=True)
        with contextlib.suppress(Exception):
            await queue.leave(name)
        await queue.close()
        runtime.close()


def main() -> None:
    settings = Settings()
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if not settings.redis_url:
        raise SystemExit("set ELASTICSR_REDIS_URL (or REDIS_URL): workers take jobs from Redis")
    asyncio.run(serve(settings))


if __name__ == "__main__":
    main()
