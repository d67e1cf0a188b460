"""Dependencies injected into the routers (overridable in tests), instead of module globals."""

from __future__ import annotations

from collections.abc import Callable

from fastapi import Request

from service.errors import Unavailable
from service.jobs.base import JobQueue
from service.load import LoadSnapshot
from service.metrics import Metrics
from service.runtime import Runtime
from service.settings import Settings


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_metrics(request: Request) -> Metrics:
    return request.app.state.metrics


def get_runtime(request: Request) -> Runtime:
    runtime = getattr(request.app.state, "runtime", None)
    if runtime is None:  # the lifespan has not run (yet)
        raise Unavailable("the service is starting", code="not_ready", retry_after_s=5)
    return runtime


def get_load_probe(request: Request) -> Callable[[], LoadSnapshot]:
    """How the controller reads load; tests override this to simulate a busy or idle server."""
    return get_runtime(request).snapshot


def get_jobs(request: Request) -> JobQueue:
    jobs = getattr(request.app.state, "jobs", None)
    if jobs is None:  # the lifespan has not connected the queue (yet)
        raise Unavailable("the job queue is starting", code="not_ready", retry_after_s=5)
    return jobs
