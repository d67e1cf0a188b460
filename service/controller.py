"""The policy: which method and tier a request gets, as a pure function of a load snapshot.

For every candidate (method, tier) the predicted latency is

    wait    = backlog of admitted compute / workers × wait correction
              (0 when a worker is free and nobody queues; the correction is the measured ratio of
              real to predicted waits: hand-offs between jobs and predictions made low by load)
    compute = overhead + request GMACs × tier's seconds per GMAC × contention factor
    total   = wait + compute

and the choice is the candidate with the highest predicted quality (manifest PSNR at the request's
scale; ties broken by tier index, then by fewer MACs) whose total fits the request's time budget,
whose compute the arrival rate can sustain, and whose quality meets `min_quality`. As the backlog
grows the richer tiers stop fitting and the choice degrades; as it drains they fit again and the
choice climbs back.

Rate: a deadline check sees one request. Under a sustained spike each request can still fit its
own deadline with a tier richer than the machine can clear at that arrival rate; the backlog then
sits at the deadline and the excess is shed, so fewer requests are answered than if all had run
their cheapest tier. The snapshot's `demand` is the cheapest compute that recent requests asked
for, per second and worker (service/demand.py). At demand d a candidate may take at most
`utilization_target / d` times the compute of the request's cheapest candidate: if every request
took its full allowance, the workers would be busy `utilization_target` of the time. Once d
reaches the target only the cheapest candidate remains, which is what the machine can clear
fastest; below it the allowance is spent on quality.

Slack reserve: every candidate but the cheapest must fit within (1 - reserve) of the budget. Greedy
choice alone fills the whole budget with rich tiers, so under a sustained spike the backlog settles
just under the deadline and every misprediction becomes an SLO miss or a shed; keeping a reserve
makes the choice degrade while the cheapest tier still has room, so the backlog settles lower.

Hysteresis: a candidate better than the previous choice must fit within (1 - hysteresis) of the
budget, so a choice near the boundary does not flap between tiers with every request.

When nothing fits: if some candidate would fit on an idle machine the request is shed (503, with
`Retry-After` = time for the backlog to drain enough); if none would fit even then, waiting cannot
help and the request is rejected (422 `deadline_unachievable`). A pinned tier or a static policy
is simply a one-candidate list and follows the same rules.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from service.load import LoadSnapshot


@dataclass(frozen=True)
class Candidate:
    """One (method, tier) that could serve the request, with its quality and cost for it."""

    method: str
    tier: str
    index: int  # position in the method's tier list, cheapest = 0
    predicted_psnr_db: float  # 0.0 when the manifest has no measurement
    gmacs: float  # work for this request's input and output size
    seconds_per_gmac: float  # uncontended, from the latency model

    @property
    def key(self) -> tuple[str, str]:
        return (self.method, self.tier)

    def rank(self) -> tuple[float, int, float]:
        """Bigger is better: quality first, then the richer tier, then the cheaper one."""
        return (self.predicted_psnr_db, self.index, -self.gmacs)


@dataclass(frozen=True)
class Need:
    """What the request asks of its answer."""

    budget_seconds: float  # deadline minus time already spent and the expected encoding time
    min_quality_db: float | None = None
    memory_bytes: int = 0  # estimated peak memory of this request


@dataclass(frozen=True)
class ControllerConfig:
    hysteresis: float = 0.15
    contention_weight: float = 1.0  # 0 on GPU: other processes' CPU use does not slow the device
    overhead_seconds: float = 0.0  # fixed compute cost of any request (see service/latency.py)
    reserve: float = 0.0  # fraction of the budget only the cheapest candidate may use (0 = greedy)
    utilization_target: float = 0.0  # busy fraction the rate allowance aims at (0 = no rate limit)


@dataclass(frozen=True)
class Decision:
    """`run` a candidate, `shed` (503, retry later) or `reject` (422, retrying will not help)."""

    outcome: str  # "run" | "shed" | "reject"
    candidate: Candidate | None = None
    wait_seconds: float = 0.0
    compute_seconds: float = 0.0
    raw_wait_seconds: float = 0.0  # the wait before the learned correction: what that is learned from
    reason: str = (
        ""  # shed: queue_full | memory | deadline; reject: quality_unreachable | deadline_unachievable
    )
    message: str = ""
    retry_after_seconds: float = 0.0

    @property
    def total_seconds(self) -> float:
        return self.wait_seconds + self.compute_seconds


# Bytes per output pixel (float32 RGB result and its copy, uint8 image, encoder buffers) and per
# input pixel (encoder feature maps) of a request's peak memory.
BYTES_PER_OUTPUT_PIXEL = 48
BYTES_PER_INPUT_PIXEL = 2048


def memory_estimate(input_pixels: int, output_pixels: int) -> int:
    return BYTES_PER_OUTPUT_PIXEL * output_pixels + BYTES_PER_INPUT_PIXEL * input_pixels


def contention_factor(snapshot: LoadSnapshot, weight: float) -> float:
    """How much slower compute runs now because other processes share the CPU (1 = not at all)."""
    return 1.0 + weight * snapshot.external_cpu_utilization


def drain_seconds(backlog_seconds: float, workers: int) -> float:
    """Seconds until `workers` have worked off `backlog_seconds` of predicted compute."""
    return backlog_seconds / max(1, workers)


def raw_wait(snapshot: LoadSnapshot) -> float:
    """Seconds a request admitted now waits for a worker, as the backlog predicts it."""
    if snapshot.queued == 0 and snapshot.running < snapshot.workers:
        return 0.0
    return drain_seconds(snapshot.backlog_seconds, snapshot.workers)


def expected_wait(snapshot: LoadSnapshot) -> float:
    """`raw_wait` times the pool's learned correction (real waits run longer than predicted)."""
    return raw_wait(snapshot) * snapshot.wait_correction


def compute_seconds(c: Candidate, config: ControllerConfig, contention: float = 1.0) -> float:
    """Predicted compute of a candidate: fixed overhead plus its work at its measured speed."""
    return config.overhead_seconds + c.gmacs * c.seconds_per_gmac * contention


def rate_allowance(demand: float, target: float) -> float:
    """How many times its cheapest compute a request may take at this demand (inf = no limit)."""
    if target <= 0.0 or demand <= 0.0:
        return math.inf
    return target / demand


def choose(
    snapshot: LoadSnapshot,
    candidates: list[Candidate],
    need: Need,
    config: ControllerConfig = ControllerConfig(),
    previous: tuple[str, str] | None = None,
) -> Decision:
    """Pick the best candidate that meets the budget under this load; see the module docstring."""
    if not candidates:
        raise ValueError("choose() needs at least one candidate")
    wait = expected_wait(snapshot)

    if snapshot.queued >= snapshot.max_queue:
        return Decision(
            "shed",
            reason="queue_full",
            wait_seconds=wait,
            retry_after_seconds=max(1.0, wait),
            message=f"{snapshot.queued} requests already wait for a worker",
        )
    if (
        snapshot.memory_limit_bytes
        and snapshot.memory_bytes + need.memory_bytes > snapshot.memory_limit_bytes
    ):
        return Decision(
            "shed",
            reason="memory",
            wait_seconds=wait,
            retry_after_seconds=max(1.0, wait),
            message="not enough memory for this request right now",
        )
    if (
        snapshot.gpu_memory_total_bytes
        and (snapshot.gpu_memory_bytes or 0) + need.memory_bytes > 0.95 * snapshot.gpu_memory_total_bytes
    ):
        return Decision(
            "shed",
            reason="memory",
            wait_seconds=wait,
            retry_after_seconds=max(1.0, wait),
            message="not enough GPU memory for this request right now",
        )

    eligible = [
        c for c in candidates if need.min_quality_db is None or c.predicted_psnr_db >= need.min_quality_db
    ]
    if not eligible:
        best = max(c.predicted_psnr_db for c in candidates)
        return Decision(
            "reject",
            reason="quality_unreachable",
            message=f"no tier is predicted to reach {need.min_quality_db:g} dB here (best: {best:.2f} dB)",
        )

    factor = contention_factor(snapshot, config.contention_weight)
    prev = next((c for c in eligible if c.key == previous), None)

    def compute(c: Candidate, contention: float = factor) -> float:
        return compute_seconds(c, config, contention)

    cheapest_eligible = min(eligible, key=compute)
    allowance = rate_allowance(snapshot.demand, config.utilization_target)

    def sustainable(c: Candidate) -> bool:
        if allowance == math.inf or c is cheapest_eligible:
            return True
        return compute(c, 1.0) <= allowance * compute(cheapest_eligible, 1.0)

    def fits(c: Candidate) -> bool:
        limit = need.budget_seconds
        if c is not cheapest_eligible:
            limit *= 1.0 - config.reserve  # leave the cheapest tier room to absorb a spike
        if prev is not None and c.rank() > prev.rank():
            limit *= 1.0 - config.hysteresis  # climbing needs headroom
        return wait + compute(c) <= limit

    fitting = [c for c in eligible if sustainable(c) and fits(c)]
    if fitting:
        best = max(fitting, key=Candidate.rank)
        return Decision(
            "run", best, wait_seconds=wait, compute_seconds=compute(best), raw_wait_seconds=raw_wait(snapshot)
        )

    cheapest = cheapest_eligible
    idle_seconds = compute(cheapest, 1.0)
    if idle_seconds > need.budget_seconds:
        return Decision(
            "reject",
            cheapest,
            compute_seconds=idle_seconds,
            reason="deadline_unachievable",
            message=(
                f"even {cheapest.method}/{cheapest.tier} on an idle server needs about "
                f"{idle_seconds * 1000:.0f} ms, more than the {need.budget_seconds * 1000:.0f} ms budget; "
                "raise deadline_ms or ask for a smaller output"
            ),
        )
    excess = wait + compute(cheapest) - need.budget_seconds
    return Decision(
        "shed",
        cheapest,
        wait_seconds=wait,
        compute_seconds=compute(cheapest),
        reason="deadline",
        retry_after_seconds=max(1.0, excess),
        message=(
            "the server is busy: the cheapest tier would finish in about "
            f"{(wait + compute(cheapest)) * 1000:.0f} ms, "
            f"past the {need.budget_seconds * 1000:.0f} ms budget"
        ),
    )
