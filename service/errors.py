"""Typed errors and the one place they become JSON responses `{"code": ..., "message": ...}`.

Codes are part of the API contract (clients and dashboards match on them); messages are for
humans and may change. Bad input must never surface as a 500.
"""

from __future__ import annotations

import logging
import math
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger(__name__)


class ErrorBody(BaseModel):
    """Every error response: a stable machine-readable `code` and a human `message`."""

    code: str
    message: str
    detail: Any | None = None


class ServiceError(Exception):
    """Base of every error the API answers on purpose."""

    status: int = 500
    code: str = "internal_error"

    def __init__(self, message: str, *, code: str | None = None, detail: Any = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.detail = detail

    def headers(self) -> dict[str, str]:
        return {}


class UndecodableImage(ServiceError):
    status, code = 400, "undecodable_image"


class PayloadTooLarge(ServiceError):
    """413: too many bytes (`payload_too_large`), input pixels or output pixels (codes below)."""

    status, code = 413, "payload_too_large"


class UnsupportedMediaType(ServiceError):
    status, code = 415, "unsupported_media_type"


class InvalidParameter(ServiceError):
    status, code = 422, "invalid_parameter"


class NotFound(ServiceError):
    status, code = 404, "not_found"


class Conflict(ServiceError):
    """409: the job exists but is not in a state that allows this (codes job_not_ready, …)."""

    status, code = 409, "conflict"

    def __init__(self, message: str, *, retry_after_s: float | None = None, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.retry_after_s = retry_after_s

    def headers(self) -> dict[str, str]:
        if self.retry_after_s is None:
            return {}
        return {"Retry-After": str(max(1, math.ceil(self.retry_after_s)))}


class Unavailable(ServiceError):
    """503 with `Retry-After`: shed under load, not ready yet, or no model loaded."""

    status, code = 503, "overloaded"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        reason: str | None = None,
        retry_after_s: float = 1.0,
        **kw: Any,
    ) -> None:
        super().__init__(message, code=code, **kw)
        self.reason = reason or self.code  # label of elasticsr_shed_requests_total
        self.retry_after_s = retry_after_s

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(max(1, math.ceil(self.retry_after_s)))}


class Unauthorized(ServiceError):
    """401: API keys are configured and the request carries none."""

    status, code = 401, "missing_api_key"

    def headers(self) -> dict[str, str]:
        return {"WWW-Authenticate": 'Bearer realm="elasticsr"'}


class Forbidden(ServiceError):
    """403: the request carries a key that is not one of the configured API keys."""

    status, code = 403, "invalid_api_key"


class RateLimited(ServiceError):
    """429 with `Retry-After`: this client sent more than its share."""

    status, code = 429, "rate_limited"

    def __init__(self, message: str, *, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(max(1, math.ceil(self.retry_after_s)))}


class ClientClosedRequest(ServiceError):
    """499 (nginx's convention): the client went away; nobody reads this answer, metrics count it."""

    status, code = 499, "client_closed_request"


# Codes answered by the API, for documentation and bounded metric labels.
ERROR_CODES = {
    "undecodable_image": 400,
    "malformed_multipart": 400,
    "payload_too_large": 413,
    "input_too_large": 413,
    "output_too_large": 413,
    "unsupported_media_type": 415,
    "missing_api_key": 401,
    "invalid_api_key": 403,
    "rate_limited": 429,
    "client_closed_request": 499,
    "invalid_parameter": 422,
    "missing_file": 422,
    "deadline_unachievable": 422,
    "quality_unreachable": 422,
    "overloaded": 503,
    "deadline_expired": 503,
    "not_ready": 503,
    "no_model_available": 503,
    "queue_unavailable": 503,
    "job_not_found": 404,
    "job_not_ready": 409,
    "job_not_succeeded": 409,
    "job_finished": 409,
    "not_found": 404,
    "method_not_allowed": 405,
    "internal_error": 500,
}

_HTTP_CODES = {
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
}


def error_response(status: int, code: str, message: str, detail: Any = None, headers: dict | None = None):
    body = ErrorBody(code=code, message=message, detail=detail).model_dump(exclude_none=True)
    return JSONResponse(body, status_code=status, headers=headers)


def install(app: FastAPI) -> None:
    """Map every exception the app can raise to the JSON error body."""

    @app.exception_handler(ServiceError)
    async def _service_error(request: Request, exc: ServiceError) -> JSONResponse:
        return error_response(exc.status, exc.code, exc.message, exc.detail, exc.headers())

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [
            {"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")}
            for e in exc.errors()
        ]
        names = ", ".join(str(e["loc"][-1]) for e in errors if e["loc"]) or "request"
        return error_response(422, "invalid_parameter", f"invalid value for {names}", errors)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = _HTTP_CODES.get(exc.status_code, f"http_{exc.status_code}")
        return error_response(exc.status_code, code, str(exc.detail), headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(500, "internal_error", "internal error; see the service log")
