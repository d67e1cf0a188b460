"""One image's way from pixels to encoded bytes, shared by the sync handler, job admission and workers.

`plan` asks the controller for a (method, tier) under a load snapshot and a time budget and raises
the API's errors when the answer is not `run`; `render` plans, runs the model on the inference pool,
feeds the measured latency back and encodes. The sync handler renders with this process's pool
snapshot; admitting a job plans with the job queue's backlog (nothing runs yet); a worker renders a
job with whatever time is left before the job's deadline. One code path, so a job and a sync
request with the same parameters get the same treatment.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from functools import partial

import anyio
import torch

from service.controller import Candidate, Decision, Need, memory_estimate
from service.errors import InvalidParameter, ServiceError, Unavailable
from service.imaging import DecodedImage, Encoding, encode
from service.inference import RunResult
from service.load import LoadSnapshot
from service.runtime import Runtime
from service.sizing import OutputSize


@dataclass(frozen=True)
class RenderSpec:
    """What the client asked for beyond the output size."""

    method: str | None = None  # None or "auto": all loaded methods compete
    tier: str | None = None  # None or "auto": the controller chooses; a name pins it
    min_quality: float | None = None  # floor on the predicted PSNR-Y, dB
    format: str | None = None  # png | jpeg | webp; None = the input's


@dataclass(frozen=True)
class Rendered:
    body: bytes
    format: str
    decision: Decision
    queue_seconds: float
    compute_seconds: float
    encode_seconds: float


def plan(
    runtime: Runtime,
    lr_size: tuple[int, int],
    out: OutputSize,
    spec: RenderSpec,
    budget_seconds: float,
    snapshot: LoadSnapshot,
    *,
    remember: bool,
) -> Decision:
    """The controller's `run` decision, or InvalidParameter (422) / Unavailable (503) as the API answers.

    `remember` feeds the choice into the hysteresis of later sync requests; jobs do not, so a large
    job's choice does not pull the sync path's tier around.
    """
    candidates, pinned = runtime.candidates(spec.method, spec.tier, lr_size, out)
    need = Need(
        budget_seconds=budget_seconds - runtime.encode_estimate(out.pixels),
        min_quality_db=spec.min_quality,
        memory_bytes=memory_estimate(lr_size[0] * lr_size[1], out.pixels),
    )
    decision = runtime.decide(snapshot, candidates, need, pinned, remember=remember)
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
    return decision


def encoding(runtime: Runtime) -> Encoding:
    s = runtime.settings
    return Encoding(s.png_compress_level, s.jpeg_quality, s.webp_quality)


async def render(
    runtime: Runtime,
    image: DecodedImage,
    out: OutputSize,
    spec: RenderSpec,
    budget_seconds: float,
    snapshot: LoadSnapshot,
    *,
    remember: bool,
    on_chosen: Callable[[Decision], Awaitable[None]] | None = None,
    watch: Callable[[Awaitable[RunResult]], Awaitable[RunResult]] | None = None,
) -> Rendered:
    """Plan, infer on the pool, learn, encode.

    The plan is made at admission; if the request then waits so long that its tier no longer fits
    the time left, it is re-planned as on an idle machine (a cheaper tier that still fits) or
    dropped (503 `deadline_expired`) rather than answered late.
    `on_chosen` runs after each decision and before the model: jobs record their tier there (and
    may raise to stop a cancelled job before it costs anything). `watch` wraps the pool's work,
    e.g. to abandon it when a sync client disconnects (service/disconnect.py).
    """
    started = time.monotonic()
    lr_size = (image.height, image.width)
    decision = plan(runtime, lr_size, out, spec, budget_seconds, snapshot, remember=remember)
    chosen = decision.candidate
    assert chosen is not None  # plan() raises otherwise
    metrics = runtime.metrics
    metrics.tier_choices.labels(*chosen.key).inc()
    metrics.predicted_psnr.labels(*chosen.key).observe(chosen.predicted_psnr_db)
    if on_chosen is not None:
        await on_chosen(decision)

    encode_estimate = runtime.encode_estimate(out.pixels)

    def work(candidate: Candidate) -> Callable[[], torch.Tensor]:
        return partial(runtime.infer, candidate.method, candidate.tier, image, (out.height, out.width))

    async def downgrade(seconds_left: float) -> tuple[float, Callable[[], torch.Tensor]] | None:
        nonlocal decision
        idle = replace(runtime.snapshot(), queued=0, running=0, backlog_seconds=0.0)
        try:
            late = plan(runtime, lr_size, out, spec, seconds_left + encode_estimate, idle, remember=False)
        except ServiceError:
            return None
        assert late.candidate is not None
        if on_chosen is not None:
            await on_chosen(late)
        metrics.late_downgrades.labels(*late.candidate.key).inc()
        decision = late
        return late.compute_seconds, work(late.candidate)

    deadline_at = started + budget_seconds - encode_estimate  # compute must end by then
    ticket = runtime.pool.admit(decision.compute_seconds, deadline_at, decision.raw_wait_seconds)
    running = runtime.pool.run(ticket, work(chosen), downgrade)
    result = await (watch(running) if watch is not None else running)
    chosen = decision.candidate
    assert chosen is not None
    runtime.observe(chosen, result.compute_seconds)
    metrics.queue_wait.observe(result.wait_seconds)
    metrics.compute.labels(*chosen.key).observe(result.compute_seconds)

    fmt = spec.format or image.format
    t_encode = time.monotonic()
    body = await anyio.to_thread.run_sync(encode, result.value, image, fmt, encoding(runtime))
    encode_seconds = time.monotonic() - t_encode
    runtime.observe_encode(encode_seconds, out.pixels)
    metrics.output_megapixels.observe(out.pixels / 1e6)
    return Rendered(body, fmt, decision, result.wait_seconds, result.compute_seconds, encode_seconds)
