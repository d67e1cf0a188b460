"""The front door: optional API keys, a per-client rate limit and a cap on concurrent upscales.

Plain ASGI middleware in front of the routers, so a refusal costs no body read, no decode and no
thread. Only the API routes (`/upscale`, `/jobs`, `/models`) are guarded; probes, metrics and the OpenAPI
document stay open (keep `/metrics` off the public ingress). Keys are compared in constant time
and never logged: a client holding a key is identified as `key<N>` (its position in the list).
"""

from __future__ import annotations

import hmac
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from service.errors import (
    ErrorBody,
    Forbidden,
    RateLimited,
    ServiceError,
    Unauthorized,
    Unavailable,
    error_response,
)
from service.metrics import NONE, Metrics
from service.settings import Settings

log = logging.getLogger(__name__)

GUARDED_PATHS = ("/upscale", "/models", "/jobs")
_RETRY_AFTER = {
    "Retry-After": {"description": "Seconds to wait before retrying.", "schema": {"type": "integer"}}
}
# What the door can answer on a guarded route, for the OpenAPI document.
OPENAPI_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {
        "model": ErrorBody,
        "description": "missing_api_key (only when API keys are configured)",
        "headers": {"WWW-Authenticate": {"required": True, "schema": {"type": "string"}}},
    },
    403: {"model": ErrorBody, "description": "invalid_api_key"},
    429: {"model": ErrorBody, "description": "rate_limited (per client)", "headers": _RETRY_AFTER},
    503: {
        "model": ErrorBody,
        "description": "overloaded (too many concurrent requests) or not_ready",
        "headers": _RETRY_AFTER,
    },
}
COUNTED_PATH = "/upscale"  # the path elasticsr_requests_total and the concurrency cap are about


class TokenBuckets:
    """One token bucket per client: `rate` tokens a second, at most `burst` saved up.

    The table is an LRU bounded by `max_clients`; a forgotten client simply starts with a full
    bucket again, so memory stays bounded however many addresses a flood comes from.
    """

    def __init__(
        self,
        rate: float,
        burst: int,
        max_clients: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.rate = rate
        self.burst = float(burst or max(1, round(rate)))
        self.max_clients = max_clients
        self.clock = clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # client -> (tokens, at)

    def __len__(self) -> int:
        return len(self._buckets)

    def take(self, client: str) -> float:
        """Spend one token: 0.0 if the request may pass, else the seconds until a token is due."""
        now = self.clock()
        tokens, at = self._buckets.pop(client, (self.burst, now))
        tokens = min(self.burst, tokens + (now - at) * self.rate)
        wait = 0.0
        if tokens >= 1.0:
            tokens -= 1.0
        else:
            wait = (1.0 - tokens) / self.rate
        self._buckets[client] = (tokens, now)
        while len(self._buckets) > self.max_clients:
            self._buckets.popitem(last=False)
        return wait


def _header(scope: dict[str, Any], name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return value.decode("latin-1")
    return None


def client_address(scope: dict[str, Any], trust_forwarded_for: bool) -> str:
    """The peer address, or the right-most X-Forwarded-For entry (the one our own proxy added)."""
    if trust_forwarded_for:
        forwarded = _header(scope, b"x-forwarded-for")
        if forwarded:
            hops = [hop.strip() for hop in forwarded.split(",") if hop.strip()]
            if hops:
                return hops[-1]
    client = scope.get("client")
    return str(client[0]) if client else "unknown"


def presented_key(scope: dict[str, Any]) -> str | None:
    """The key from `X-API-Key`, or from `Authorization: Bearer <key>`."""
    key = _header(scope, b"x-api-key")
    if key:
        return key.strip()
    auth = _header(scope, b"authorization") or ""
    scheme, _, token = auth.partition(" ")
    if scheme.lower() != "bearer":
        return None
    return token.strip() or None


class Guard:
    """The front door's state for one app: keys, buckets and the count of upscales in flight."""

    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self._keys = [k.get_secret_value().encode() for k in settings.api_keys]
        self.buckets = (
            TokenBuckets(settings.rate_limit_per_s, settings.rate_limit_burst)
            if settings.rate_limit_per_s > 0
            else None
        )
        self.active = 0  # upscale requests past the door and not yet answered

    def key_index(self, key: str | None) -> int | None:
        """Which configured key this is; every key is compared so timing says nothing."""
        if key is None:
            return None
        found = None
        for i, known in enumerate(self._keys):
            if hmac.compare_digest(known, key.encode("utf-8", "surrogateescape")):
                found = i
        return found

    def check(self, scope: dict[str, Any]) -> ServiceError | None:
        """Why this request may not pass, or None. Rate first, so key guessing is throttled too."""
        address = client_address(scope, self.settings.trust_forwarded_for)
        key = presented_key(scope) if self._keys else None
        index = self.key_index(key)
        client = f"key{index}" if index is not None else address
        if self.buckets is not None:
            wait = self.buckets.take(client)
            if wait > 0:
                return RateLimited(
                    f"more than {self.settings.rate_limit_per_s:g} requests per second; slow down",
                    retry_after_s=wait,
                )
        if self._keys and index is None:
            problem: ServiceError = (
                Unauthorized("an API key is required: send X-API-Key or Authorization: Bearer")
                if key is None
                else Forbidden("the API key is not valid")
            )
            log.warning("refused %s from %s: %s", scope.get("path"), address, problem.code)
            return problem
        if scope["path"] == COUNTED_PATH and 0 < self.settings.max_concurrent_requests <= self.active:
            return Unavailable(
                f"{self.active} upscale requests are already being handled",
                code="overloaded",
                reason="concurrency",
                retry_after_s=1.0,
                detail={"reason": "concurrency"},
            )
        return None

    def record_refusal(self, scope: dict[str, Any], problem: ServiceError, seconds: float) -> None:
        if scope["path"] != COUNTED_PATH:
            return
        if isinstance(problem, Unavailable):
            self.metrics.shed.labels(problem.reason).inc()
        outcome = "shed" if problem.status == 503 else "client_error"
        self.metrics.finish(NONE, NONE, outcome, problem.code, seconds)


class GuardMiddleware:
    """ASGI wrapper applying a `Guard` to the API routes."""

    def __init__(self, app: Any, guard: Guard) -> None:
        self.app = app
        self.guard = guard

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or not path.startswith(GUARDED_PATHS):
            await self.app(scope, receive, send)
            return
        started = time.monotonic()
        problem = self.guard.check(scope)
        if problem is not None:
            self.guard.record_refusal(scope, problem, time.monotonic() - started)
            response = error_response(
                problem.status, problem.code, problem.message, problem.detail, problem.headers()
            )
            await response(scope, receive, send)
            return
        if path != COUNTED_PATH:
            await self.app(scope, receive, send)
            return
        self.guard.active += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.guard.active -= 1
