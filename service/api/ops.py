"""Operations endpoints: liveness, readiness and Prometheus metrics.

Handlers are `async` on purpose: they read the worker pool's bookkeeping, which only the event
loop mutates, so they must not run in FastAPI's thread pool.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request, Response

from service.api.deps import get_metrics
from service.errors import ErrorBody, error_response
from service.metrics import Metrics

router = APIRouter(tags=["ops"])


@router.get("/healthz", summary="Liveness: the process answers")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get(
    "/readyz",
    summary="Readiness: checkpoints loaded and warmed up",
    responses={
        503: {
            "model": ErrorBody,
            "description": "Still loading, no checkpoint could be loaded, or shutting down (draining).",
        }
    },
)
async def readyz(request: Request) -> Any:
    runtime = getattr(request.app.state, "runtime", None)
    if getattr(request.app.state, "draining", False):  # shutting down: the balancer should look elsewhere
        return error_response(503, "not_ready", "the service is shutting down", {"state": "draining"})
    if runtime is not None and runtime.ready:
        return {"status": "ready", "methods": list(runtime.methods), "failed": runtime.failures}
    problem = runtime.unavailable() if runtime is not None else None
    message = problem.message if problem is not None else "the service is starting"
    return error_response(503, "not_ready", message, {"state": getattr(runtime, "state", "starting")})


@router.get(
    "/metrics",
    summary="Prometheus metrics (text exposition format)",
    response_class=Response,
    responses={200: {"content": {"text/plain": {}}}},
)
async def metrics(request: Request, metrics: Annotated[Metrics, Depends(get_metrics)]) -> Response:
    runtime = getattr(request.app.state, "runtime", None)
    if runtime is not None:
        metrics.set_load(runtime.snapshot())
    body, content_type = metrics.exposition()
    return Response(body, media_type=content_type)
