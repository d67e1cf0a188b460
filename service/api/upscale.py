"""POST /upscale: decode, size, let the controller pick method and tier, infer, encode.

Cheap refusals come first (not ready, wrong type, too many bytes), then the image is decoded off
the event loop, the output size resolved, the controller consulted with a fresh load snapshot,
and the request admitted to the worker pool. Every exit is counted in the metrics.
"""

from __future__ import annotations

import math
import time
from collections.abc import AsyncGenerator, Callable
from functools import partial
from typing import Annotated, Literal

import anyio
from fastapi import APIRouter, Depends, Query, Request, Response
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import ClientDisconnect

from service.api.deps import get_load_probe, get_runtime
from service.controller import Decision, Need, memory_estimate
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
from service.imaging import FORMATS, Encoding, check_media_type, decode, encode
from service.load import LoadSnapshot
from service.metrics import NONE
from service.runtime import Runtime
from service.sizing import OutputSize, ScaleRequest, execution_mode, resolve_output

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
        "description": "overloaded, deadline_expired, not_ready, no_model_available (with Retry-After)",
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
        Query(json_schema_extra=_POSITIVE, description="Latency target; default from the server."),
    ] = None,
    min_quality: Annotated[float | None, Query(description="Floor on the predicted PSNR-Y in dB.")] = None,
    format: Annotated[
        Literal["png", "jpeg", "webp"] | None, Query(description="Output format; default: the input's.")
    ] = None,
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
        deadline_s = (deadline_ms if deadline_ms is not None else settings.default_deadline_ms) / 1000.0
        if not 0 < deadline_s * 1000 <= settings.max_deadline_ms:
            raise InvalidParameter(f"deadline_ms must satisfy 0 < deadline_ms ≤ {settings.max_deadline_ms:g}")

        data = await read_image_bytes(request, settings.max_body_bytes)
        t_read = time.monotonic()
        image = await anyio.to_thread.run_sync(decode, data, settings.max_input_pixels)
        del data
        out = resolve_output(
            image.height,
            image.width,
            ScaleRequest(scale, scale_x, scale_y, width, height),
            settings.max_scale,
        )
        execution_mode(out, settings.max_output_pixels)
        t_decoded = time.monotonic()

        candidates, pinned = runtime.candidates(method, tier, (image.height, image.width), out)
        need = Need(
            budget_seconds=deadline_s - (t_decoded - started) - runtime.encode_estimate(out.pixels),
            min_quality_db=min_quality,
            memory_bytes=memory_estimate(image.height * image.width, out.pixels),
        )
        decision = runtime.decide(probe(), candidates, need, pinned)
        if decision.outcome == "reject":
            raise InvalidParameter(decision.message, code=decision.reason)
        if decision.outcome == "shed" or decision.candidate is None:
            raise Unavailable(
                decision.message,
                code="overloaded",
                reason=decision.reason,
                retry_after_s=decision.retry_after_seconds,
                detail={"reason": decision.reason},
            )
        chosen = decision.candidate
        labels = chosen.key
        metrics.tier_choices.labels(*labels).inc()
        metrics.predicted_psnr.labels(*labels).observe(chosen.predicted_psnr_db)

        ticket = runtime.pool.admit(decision.compute_seconds, deadline_at=started + deadline_s)
        infer = partial(runtime.infer, chosen.method, chosen.tier, image, (out.height, out.width))
        result = await unless_disconnected(request, runtime.pool.run(ticket, infer))
        runtime.observe(chosen, result.compute_seconds)
        metrics.queue_wait.observe(result.wait_seconds)
        metrics.compute.labels(*labels).observe(result.compute_seconds)

        fmt = format or image.format
        t_encode = time.monotonic()
        encoding = Encoding(settings.png_compress_level, settings.jpeg_quality, settings.webp_quality)
        body = await anyio.to_thread.run_sync(encode, result.value, image, fmt, encoding)
        encode_s = time.monotonic() - t_encode
        runtime.observe_encode(encode_s, out.pixels)
        metrics.output_megapixels.observe(out.pixels / 1e6)
        total = time.monotonic() - started
        metrics.finish(*labels, "ok", "ok", total)
    except ServiceError as exc:
        outcome = "shed" if exc.status == 503 else "client_error" if exc.status < 500 else "error"
        if isinstance(exc, Unavailable):
            metrics.shed.labels(exc.reason).inc()
            labels = (NONE, NONE)
        metrics.finish(*labels, outcome, exc.code, time.monotonic() - started)
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
        "queue": result.wait_seconds,
        "compute": result.compute_seconds,
        "encode": encode_s,
        "total": total,
    }
    headers = _headers(runtime, decision, out, timing)
    return Response(body, media_type=FORMATS[fmt][1], headers=headers)


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
