"""Assembles the FastAPI application: settings, error mapping, routers and the lifespan.

Nothing here decides anything; `create_app` wires the pieces so tests can build their own apps.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import AsyncIterator

from fastapi import FastAPI

from service import errors
from service.api import jobs as jobs_api
from service.api import models, ops, upscale
from service.guard import OPENAPI_RESPONSES, Guard, GuardMiddleware
from service.jobs.base import JobQueue, maintain_forever
from service.jobs.execute import JobExecutor
from service.jobs.inprocess import InProcessQueue
from service.jobs.redisqueue import RedisQueue
from service.metrics import Metrics
from service.runtime import Loader, Runtime, default_loader
from service.settings import Settings

log = logging.getLogger(__name__)

DESCRIPTION = """Upscales images to any scale (×1.1 … ×30, non-integer and asymmetric) and picks,
per request, the method and tier that give the best predicted quality the server can deliver within
the request's deadline under the current load."""


async def open_queue(settings: Settings, metrics: Metrics, runtime: Runtime) -> JobQueue:
    """Redis when `ELASTICSR_REDIS_URL` is set (workers render), else the in-process queue."""
    if settings.redis_url:
        return await RedisQueue.connect(settings, metrics)
    return InProcessQueue(settings, metrics, runtime.pool)


def create_app(settings: Settings | None = None, *, loader: Loader = default_loader) -> FastAPI:
    """Build a fresh application; models load in the background when it starts serving.

    `loader(name, device, checkpoint_dir)` returns a loaded model; tests pass a caching one.
    """
    settings = settings or Settings()
    metrics = Metrics()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        runtime = Runtime(settings, metrics, loader)
        app.state.runtime = runtime
        jobs = await open_queue(settings, metrics, runtime)
        app.state.jobs = jobs
        tasks = [
            asyncio.create_task(runtime.start()),
            asyncio.create_task(runtime.sample_forever()),
            asyncio.create_task(maintain_forever(jobs, metrics, settings.load_sample_interval_s * 2)),
        ]
        if isinstance(jobs, InProcessQueue):  # no Redis: this process renders its own jobs
            executor = JobExecutor(runtime, jobs, worker=f"{socket.gethostname()}:{os.getpid()}")
            tasks.append(asyncio.create_task(jobs.run_forever(executor)))
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await jobs.close()
            runtime.close()

    app = FastAPI(title="ElasticSR", version="0.1.0", description=DESCRIPTION, lifespan=lifespan)
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.draining = False  # set on SIGTERM (service/lifecycle.py): /readyz turns 503 first
    app.state.guard = Guard(settings, metrics)
    app.add_middleware(GuardMiddleware, guard=app.state.guard)
    errors.install(app)
    app.include_router(upscale.router, responses=OPENAPI_RESPONSES)
    app.include_router(jobs_api.router, responses=OPENAPI_RESPONSES)
    app.include_router(models.router, responses=OPENAPI_RESPONSES)
    app.include_router(ops.router)
    return app
