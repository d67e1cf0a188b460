"""Open-loop load: each request leaves at its scheduled time whether or not earlier ones answered.

That is the property the serving literature measures under (k6 `constant-arrival-rate`, the
SuperServe and Proteus traces): a closed loop would slow its own arrivals as the server slows down
and hide overload. Latency is counted from the *scheduled* send time, so a late send (a busy
client) is charged to the measurement instead of silently thinning the load. In-flight requests
are capped only as a safety bound; an arrival over the cap is recorded as `dropped` (a miss),
never delayed.

`run_closed_loop` is the opposite on purpose: it measures capacity, the most a server completes
per second when it always has work.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

import httpx

from loadtests.workload import Arrival, RequestSpec

HEADER_METHOD = "x-elasticsr-method"
HEADER_TIER = "x-elasticsr-tier"
HEADER_PSNR = "x-elasticsr-predicted-psnr"
HEADER_GAIN = "x-elasticsr-predicted-gain"


@dataclass(frozen=True)
class Outcome:
    """What one HTTP exchange returned; `http_status` None means no answer (`error` says why)."""

    http_status: int | None
    body: bytes = b""
    headers: dict[str, str] | None = None
    error: str = ""  # "timeout" | "connect" | ... when http_status is None


Send = Callable[[RequestSpec], Awaitable[Outcome]]


@dataclass
class Record:
    """One arrival's fate, as the client saw it."""

    index: int  # position in the schedule: the same arrival in every policy's run
    level: int
    spec: int
    scheduled: float  # seconds after the run started
    send_lag: float  # how late the request actually left (client health), seconds
    latency: float | None  # scheduled send -> full response read; None when never sent
    status: str  # ok | shed | rejected | error | timeout | dropped
    http_status: int | None = None
    method: str = ""
    tier: str = ""
    predicted_psnr: float | None = None
    predicted_gain: float | None = None
    body: bytes | None = None  # kept for ok responses, for PSNR scoring after the run
    measured_psnr: float | None = None  # filled in for the scored sample
    bicubic_psnr: float | None = None  # bicubic from the same LR, for the same sample


def classify(outcome: Outcome) -> str:
    if outcome.http_status is None:
        return "timeout" if outcome.error == "timeout" else "error"
    if outcome.http_status == 200:
        return "ok"
    if outcome.http_status == 503:
        return "shed"
    return "rejected" if 400 <= outcome.http_status < 500 else "error"


def _float(headers: dict[str, str], name: str) -> float | None:
    try:
        return float(headers[name])
    except (KeyError, ValueError):
        return None


def record_of(
    index: int, level: int, spec: int, scheduled: float, lag: float, latency: float, out: Outcome
) -> Record:
    status = classify(out)
    headers = out.headers or {}
    return Record(
        index,
        level,
        spec,
        scheduled,
        lag,
        latency,
        status,
        out.http_status,
        headers.get(HEADER_METHOD, ""),
        headers.get(HEADER_TIER, ""),
        _float(headers, HEADER_PSNR),
        _float(headers, HEADER_GAIN),
        out.body if status == "ok" else None,
    )


async def run_open_loop(
    arrivals: Sequence[Arrival],
    mix: Sequence[RequestSpec],
    send: Send,
    max_inflight: int = 256,
    clock: Callable[[], float] = time.monotonic,
) -> list[Record]:
    """Fire every arrival at its offset; wait for the stragglers only after the last one left."""
    records: list[Record] = []
    inflight = 0
    start = clock() + 0.05  # a short lead-in so the first arrival is not already late

    async def one(index: int, arrival: Arrival, due: float) -> None:
        nonlocal inflight
        lag = clock() - due
        try:
            out = await send(mix[arrival.spec])
        except Exception as exc:  # a broken exchange is a failed request, not a crashed run
            out = Outcome(None, error=type(exc).__name__)
        finally:
            inflight -= 1
        records.append(record_of(index, arrival.level, arrival.spec, arrival.offset, lag, clock() - due, out))

    tasks = []
    for index, arrival in enumerate(arrivals):
        due = start + arrival.offset
        delay = due - clock()
        if delay > 0:
            await asyncio.sleep(delay)
        if inflight >= max_inflight:
            records.append(Record(index, arrival.level, arrival.spec, arrival.offset, 0.0, None, "dropped"))
            continue
        inflight += 1
        tasks.append(asyncio.create_task(one(index, arrival, due)))
    await asyncio.gather(*tasks)
    records.sort(key=lambda r: r.scheduled)
    return records


async def run_closed_loop(
    mix: Sequence[RequestSpec], send: Send, concurrency: int, seconds: float, clock=time.monotonic
) -> tuple[list[Record], float]:
    """`concurrency` clients sending back to back through the mix for `seconds`; (records, elapsed)."""
    records: list[Record] = []
    start = clock()
    counter = iter(range(1 << 62))

    async def client() -> None:
        while clock() - start < seconds:
            spec = next(counter) % len(mix)
            t0 = clock()
            try:
                out = await send(mix[spec])
            except Exception as exc:
                out = Outcome(None, error=type(exc).__name__)
            records.append(record_of(len(records), 0, spec, t0 - start, 0.0, clock() - t0, out))

    await asyncio.gather(*(client() for _ in range(concurrency)))
    return records, clock() - start


def check_loopback(url: str) -> str:
    """The load generator only ever targets this machine's loopback address."""
    host = urlsplit(url).hostname
    if host != "127.0.0.1":
        raise ValueError(f"load tests target only 127.0.0.1, not {host!r}")
    return url


class HttpSender:
    """POSTs a mix entry to /upscale with a deadline; an unbounded connection pool keeps it open-loop.

    (A bounded httpx pool would queue requests inside the client — a hidden closed loop.)
    """

    def __init__(self, base_url: str, deadline_ms: float, timeout_s: float) -> None:
        self.base_url = check_loopback(base_url)
        self.deadline_ms = deadline_ms
        self.client = httpx.AsyncClient(
            base_url=self.base_url,
            timeout=httpx.Timeout(timeout_s),
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=64),
        )

    async def __call__(self, spec: RequestSpec, deadline_ms: float | None = None) -> Outcome:
        try:
            response = await self.client.post(
                "/upscale",
                params=spec.params(self.deadline_ms if deadline_ms is None else deadline_ms),
                content=spec.lr_png,
                headers={"content-type": "image/png"},
            )
        except httpx.TimeoutException:
            return Outcome(None, error="timeout")
        except httpx.TransportError as exc:
            return Outcome(None, error=type(exc).__name__)
        return Outcome(response.status_code, response.content, dict(response.headers))

    async def aclose(self) -> None:
        await self.client.aclose()
