"""POST /upscale: read, size from the header, then answer the image now or queue a job (202).

Cheap refusals come first (not ready, wrong type, too many bytes), then the header is read off the
event loop and the output size resolved. Outputs over `max_output_pixels` (4K and beyond) and
`?async=true` requests become jobs: planned against the job queue's backlog, stored and answered
with 202 + Location, so they never hold the sync path. Others are decoded and rendered through the
same pipeline as jobs (service/pipeline.py) with this process's load. Every exit is counted.
"""

from __future__ import annotations

import math
import time
import uuid
from collections.abc import AsyncGenerator, Callable
from dataclasses import replace
from functools import partial
from typing import Annotated, Literal

import anyio
from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.responses import JSONResponse
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import ClientDisconnect

from service.api.deps import get_jobs, get_load_probe, get_runtime
from service.controller import Decision
from service.disconnect import unless_disconnected
from service.errors import (
    ClientClosedRequest,
    ErrorBody,
    InvalidParameter,
    PayloadTooLarge,
    ServiceError,
    Unavailable,
    UndecodableImage,
)
from service.imaging import FORMATS, ImageHeader, check_media_type, decode
from service.imaging import probe as probe_header
from service.jobs.base import JobQueue
from service.jobs.model import JobRecord, JobView
from service.load import LoadSnapshot
from service.metrics import NONE
from service.pipeline import RenderSpec, plan, render
from service.runtime import Runtime
from service.sizing import ExecutionMode, OutputSize, ScaleRequest, execution_mode, resolve_output

router = APIRouter(tags=["upscale"])

_MULTIPART_OVERHEAD = 64 * 1024
# Ranges documented in the schema but checked in the handler (sizing.py), so every refusal is counted
# in the metrics and worded the same way.
_ABOVE_ONE = {"exclusiveMinimum": 1}
_POSITIVE = {"exclusiveMinimum": 0}
_POSITIVE_INT = {"minimum": 1}
_IMAGE_BODY = {"schema": {"type": "string", "format": "binary"}}
_OPENAPI_BODY = {
    "requestBody": {
        "required": True,
        "description": "The image as the raw body (PNG, JPEG or WebP), or multipart/form-data with a `file`.",
        "content": {
            "image/png": _IMAGE_BODY,
            "image/jpeg": _IMAGE_BODY,
            "image/webp": _IMAGE_BODY,
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {"file": {"type": "string", "format": "binary"}},
                    "required": ["file"],
                }
            },
        },
    }
}
_RESPONSES: dict[int | str, dict] = {
    202: {
        "model": JobView,
        "description": "Queued as a job (large output, or async=true): poll Location (/jobs/{id}).",
    },
    200: {
        "content": {
            media: {"schema": {"type": "string", "format": "binary"}} for _, media in FORMATS.values()
        },
        "description": "The image; X-ElasticSR-Method/-Tier/-Predicted-PSNR and Server-Timing headers.",
    },
    400: {"model": ErrorBody, "description": "undecodable_image, malformed_multipart"},
    413: {"model": ErrorBody, "description": "payload_too_large, input_too_large, output_too_large"},
    415: {"model": ErrorBody, "description": "unsupported_media_type"},
    422: {
        "model": ErrorBody,
        "description": "invalid_parameter, missing_file, deadline_unachievable, quality_unreachable",
    },
    503: {
        "model": ErrorBody,
        "description": "overloaded (jobs: queue_full), deadline_expired, not_ready, no_model_available, "
        "queue_unavailable (with Retry-After)",
        "headers": {"Retry-After": {"required": True, "schema": {"type": "integer", "minimum": 1}}},
    },
}


async def _read_limited(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"body of {declared} bytes exceeds the limit of {limit}")
    chunks, size = [], 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise PayloadTooLarge(f"body exceeds the limit of {limit} bytes")
            chunks.append(chunk)
    except ClientDisconnect as exc:
        raise ClientClosedRequest(f"the client disconnected after {size} bytes of the body") from exc
    return b"".join(chunks)


async def _once(data: bytes) -> AsyncGenerator[bytes, None]:
    yield data


async def read_image_bytes(request: Request, max_bytes: int) -> bytes:
    """The image bytes from a raw image body or a multipart `file` part, within the byte limit."""
    content_type = request.headers.get("content-type", "")
    if content_type.split(";")[0].strip().lower() != "multipart/form-data":
        check_media_type(content_type)
        return await _read_limited(request, max_bytes)
    body = await _read_limited(request, max_bytes + _MULTIPART_OVERHEAD)
    try:
        form = await MultiPartParser(request.headers, _once(body), max_files=1, max_fields=8).parse()
    except MultiPartException as exc:
        raise UndecodableImage(
            f"malformed multipart body: {exc.message}", code="malformed_multipart"
        ) from exc
    try:
        part = form.get("file")
        if part is None or isinstance(part, str):
            raise InvalidParameter("multipart body needs a file part named 'file'", code="missing_file")
        check_media_type(part.content_type or "application/octet-stream")
        data = await part.read()
    finally:
        await form.close()
    if len(data) > max_bytes:
        raise PayloadTooLarge(f"file of {len(data)} bytes exceeds the limit of {max_bytes}")
    return data


def _finite(name: str, value: float | None) -> float | None:
    if value is not None and not math.isfinite(value):
        raise InvalidParameter(f"{name} must be a finite number")
    return value


@router.post(
    "/upscale",
    summary="Upscale an image to any scale with the best quality the server can afford now",
    response_class=Response,
    responses=_RESPONSES,
    openapi_extra=_OPENAPI_BODY,
)
async def upscale(
    request: Request,
    runtime: Annotated[Runtime, Depends(get_runtime)],
    jobs: Annotated[JobQueue, Depends(get_jobs)],
    probe: Annotated[Callable[[], LoadSnapshot], Depends(get_load_probe)],
    scale: Annotated[
        float | None,
        Query(json_schema_extra=_ABOVE_ONE, description="Factor for both axes, 1 < scale ≤ max_scale."),
    ] = None,
    scale_x: Annotated[
        float | None, Query(json_schema_extra=_ABOVE_ONE, description="Horizontal factor (with scale_y).")
    ] = None,
    scale_y: Annotated[
        float | None, Query(json_schema_extra=_ABOVE_ONE, description="Vertical factor (with scale_x).")
    ] = None,
    width: Annotated[
        int | None,
        Query(json_schema_extra=_POSITIVE_INT, description="Output width in pixels (alone: keeps aspect)."),
    ] = None,
    height: Annotated[
        int | None,
        Query(json_schema_extra=_POSITIVE_INT, description="Output height in pixels (alone: keeps aspect)."),
    ] = None,
    method: Annotated[str | None, Query(description="ssrno, anysr, moeisr, clit, or auto (default).")] = None,
    tier: Annotated[
        str | None,
        Query(description="A tier name of the method (pins it: no degradation), or auto (default)."),
    ] = None,
    deadline_ms: Annotated[
        float | None,
        Query(
            json_schema_extra=_POSITIVE,
            description="Latency target; default from the server (jobs: job_deadline_ms).",
        ),
    ] = None,
    min_quality: Annotated[float | None, Query(description="Floor on the predicted PSNR-Y in dB.")] = None,
    format: Annotated[
        Literal["png", "jpeg", "webp"] | None, Query(description="Output format; default: the input's.")
    ] = None,
    run_async: Annotated[
        bool,
        Query(alias="async", description="Queue a job (202 + Location) even if the output is small enough."),
    ] = False,
) -> Response:
    started = time.monotonic()
    metrics, settings = runtime.metrics, runtime.settings
    labels = (NONE, NONE)
    metrics.inflight.inc()
    runtime.inflight += 1
    try:
        problem = runtime.unavailable()
        if problem is not None:
            raise problem
        deadline_ms = _finite("deadline_ms", deadline_ms)
        min_quality = _finite("min_quality", min_quality)

        data = await read_image_bytes(request, settings.max_body_bytes)
        t_read = time.monotonic()
        header = await anyio.to_thread.run_sync(probe_header, data, settings.max_input_pixels)
        out = resolve_output(
            header.height,
            header.width,
            ScaleRequest(scale, scale_x, scale_y, width, height),
            settings.max_scale,
        )
        mode = execution_mode(out, settings.max_output_pixels, settings.max_job_output_pixels, run_async)
        spec = RenderSpec(method, tier, min_quality, format)
        if mode is ExecutionMode.QUEUED:
            response = await _queue_job(runtime, jobs, probe, data, header, out, spec, deadline_ms, started)
            metrics.finish(NONE, NONE, "queued", "queued", time.monotonic() - started)
            return response

        deadline_s = _deadline_seconds(deadline_ms, settings.default_deadline_ms, settings.max_deadline_ms)
        image = await anyio.to_thread.run_sync(decode, data, settings.max_input_pixels)
        del data
        t_decoded = time.monotonic()
        rendered = await render(
            runtime,
            image,
            out,
            spec,
            deadline_s - (t_decoded - started),
            probe(),
            remember=True,
            watch=partial(unless_disconnected, request),
        )
        labels = rendered.decision.candidate.key if rendered.decision.candidate else labels
        total = time.monotonic() - started
        metrics.finish(*labels, "ok", "ok", total)
    except ServiceError as exc:
        outcome = "shed" if exc.status == 503 else "client_error" if exc.status < 500 else "error"
        if isinstance(exc, Unavailable):
            metrics.shed.labels(exc.reason).inc()
        metrics.finish(NONE, NONE, outcome, exc.code, time.monotonic() - started)
        raise
    except Exception:
        metrics.finish(*labels, "error", "internal_error", time.monotonic() - started)
        raise
    finally:
        metrics.inflight.dec()
        runtime.inflight -= 1

    timing = {
        "read": t_read - started,
        "decode": t_decoded - t_read,
        "queue": rendered.queue_seconds,
        "compute": rendered.compute_seconds,
        "encode": rendered.encode_seconds,
        "total": total,
    }
    headers = _headers(runtime, rendered.decision, out, timing)
    return Response(rendered.body, media_type=FORMATS[rendered.format][1], headers=headers)


def _deadline_seconds(deadline_ms: float | None, default_ms: float, max_ms: float) -> float:
    value = deadline_ms if deadline_ms is not None else default_ms
    if not 0 < value <= max_ms:
        raise InvalidParameter(f"deadline_ms must satisfy 0 < deadline_ms ≤ {max_ms:g}")
    return value / 1000.0


async def _queue_job(
    runtime: Runtime,
    jobs: JobQueue,
    probe: Callable[[], LoadSnapshot],
    data: bytes,
    header: ImageHeader,
    out: OutputSize,
    spec: RenderSpec,
    deadline_ms: float | None,
    started: float,
) -> Response:
    """Plan against the job queue's backlog (refusing what cannot make its deadline), store, answer 202."""
    settings = runtime.settings
    deadline_s = _deadline_seconds(deadline_ms, settings.job_deadline_ms, settings.max_job_deadline_ms)
    stats = await jobs.stats()
    if jobs.local:  # jobs share this process's pool with sync requests
        base = probe()
        snapshot = replace(base, queued=base.queued + stats.depth, backlog_seconds=stats.backlog_seconds)
    else:  # the workers' backlog; their memory and CPU are theirs to check
        snapshot = LoadSnapshot(
            queued=stats.depth,
            running=stats.running,
            workers=max(1, stats.workers),
            backlog_seconds=stats.backlog_seconds,
        )
    snapshot = replace(snapshot, max_queue=settings.max_jobs + 1)  # the queue enforces its own cap
    budget_s = deadline_s - (time.monotonic() - started)
    decision = plan(runtime, (header.height, header.width), out, spec, budget_s, snapshot, remember=False)
    chosen = decision.candidate
    assert chosen is not None  # plan() raises otherwise
    now = time.time()
    record = JobRecord(
        id=uuid.uuid4().hex,
        created_at=now,
        deadline_at=now + budget_s,
        method_asked=spec.method,
        tier_asked=spec.tier,
        min_quality=spec.min_quality,
        format=spec.format or header.format,
        input_bytes=len(data),
        input_width=header.width,
        input_height=header.height,
        output_width=out.width,
        output_height=out.height,
        method=chosen.method,
        tier=chosen.tier,
        predicted_psnr_db=chosen.predicted_psnr_db,
        predicted_seconds=decision.compute_seconds,
    )
    await jobs.submit(record, data)
    view = JobView.of(record, settings.result_ttl_s)
    headers = {
        "Location": f"/jobs/{record.id}",
        "Retry-After": str(max(1, math.ceil(decision.total_seconds))),
    }
    return JSONResponse(view.model_dump(mode="json"), status_code=202, headers=headers)


def _headers(
    runtime: Runtime, decision: Decision, out: OutputSize, timing: dict[str, float]
) -> dict[str, str]:
    """What was chosen, what it should deliver, and where the time went."""
    chosen = decision.candidate
    assert chosen is not None
    return {
        "X-ElasticSR-Method": chosen.method,
        "X-ElasticSR-Tier": chosen.tier,
        "X-ElasticSR-Predicted-PSNR": f"{chosen.predicted_psnr_db:.2f}",
        "X-ElasticSR-Predicted-Gain": f"{runtime.predicted_gain(chosen.method, chosen.tier, out.scale):.2f}",
        "X-ElasticSR-Scale": f"{out.scale_x:.4g}x{out.scale_y:.4g}",
        "X-ElasticSR-Output-Size": f"{out.width}x{out.height}",
        "X-ElasticSR-Policy": str(runtime.policy),
        "X-ElasticSR-Predicted-Ms": f"{decision.total_seconds * 1000:.1f}",
        "X-ElasticSR-Queue-Wait-Ms": f"{timing['queue'] * 1000:.1f}",
        "X-ElasticSR-Compute-Ms": f"{timing['compute'] * 1000:.1f}",
        "Server-Timing": ", ".join(f"{k};dur={v * 1000:.1f}" for k, v in timing.items()),
    }
