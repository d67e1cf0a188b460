"""Per-tier latency model: a fixed cost plus seconds per GMAC, learned on this machine.

MACs are what a tier costs on paper (`model.macs`); seconds per GMAC is what this machine makes of
them, and every request also pays a fixed cost (set-up, copies, the first chunk, per-call
overheads) that differs between tiers and dominates small requests. The prior comes from the
manifest's timing (or a default) with the `overhead` setting as fixed cost; warm-up times every
tier at two input sizes and fits both per tier; served requests then correct the figures, so the
model follows the hardware and thermal state instead of trusting numbers measured elsewhere.

Predicted compute = (fixed + GMACs × seconds per GMAC) × pace × contention. The *pace* is one
factor shared by every tier. Under load the served requests slow down together (HTTP, image
decoding and encoding take the same cores), but only the tiers being served are observed. Were
each tier learned alone, those would look ever slower while tiers not served kept their idle
figures, and the controller would move to tiers that only look cheap because nobody ran them
lately. So each observation moves the shared pace (`alpha`, in log space) and, by a quarter of
that step, the observed tier's own figures, which corrects a tier whose warm-up was off without
taking up the machine's slowdown. One observation moves them at most by a factor of 4 (a cold
cache or a page fault must not make a tier look unusable).

Values are stored *uncontended*: an observation made while other processes loaded the CPU is
divided by the contention factor of that moment, and predictions multiply it back in.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from typing import Any

from models.manifest import tier_entry

Key = tuple[str, str]  # (method, tier)

# Manifest timings are for a square input whose side the manifest records (128 by convention).
_MANIFEST_LR_SIDE = 128
# Shorter computes measure timer and scheduling noise more than the tier.
MIN_LEARNING_SECONDS = 0.002
MAX_STEP = 4.0
TIER_SHARE = 0.25  # of each log-step, what the observed tier's own rate takes besides the pace


def prior_from_manifest(manifest: dict[str, Any], tier: str) -> float | None:
    """Seconds per GMAC implied by the manifest's measured CPU latency and MACs, if it has both."""
    try:
        entry = tier_entry(manifest, tier)
    except KeyError:
        return None
    latency, macs = entry.get("cpu_latency_ms", {}), entry.get("macs_per_output_pixel", {})
    side = manifest.get("cpu_latency_measured", {}).get("lr_size", _MANIFEST_LR_SIDE)
    for scale in sorted(set(latency) & set(macs), key=float):
        out_side = round(side * float(scale))
        gmacs = float(macs[scale]) * out_side * out_side / 1e9
        if gmacs > 0 and float(latency[scale]) > 0:
            return float(latency[scale]) / 1000.0 / gmacs
    return None


@dataclass(frozen=True)
class TierCost:
    """Uncontended compute of one tier at pace 1: fixed seconds + GMACs × seconds per GMAC."""

    fixed_seconds: float
    seconds_per_gmac: float

    def seconds(self, gmacs: float) -> float:
        return self.fixed_seconds + gmacs * self.seconds_per_gmac

    def scaled(self, factor: float) -> TierCost:
        return TierCost(self.fixed_seconds * factor, self.seconds_per_gmac * factor)


def fit_cost(runs: list[tuple[float, float]], fallback_fixed: float) -> TierCost | None:
    """A tier's cost from timed runs (seconds, GMACs): the line through them, least squares.

    With one run, or runs whose slope is not positive (noise across sizes too close together),
    `fallback_fixed` is taken as the fixed cost and the rest is charged per GMAC.
    """
    runs = [(t, g) for t, g in runs if t > 0 and g > 0]
    if not runs:
        return None
    if len({g for _, g in runs}) >= 2:
        mean_t = sum(t for t, _ in runs) / len(runs)
        mean_g = sum(g for _, g in runs) / len(runs)
        var = sum((g - mean_g) ** 2 for _, g in runs)
        slope = sum((g - mean_g) * (t - mean_t) for t, g in runs) / var
        if slope > 0:
            return TierCost(max(0.0, mean_t - slope * mean_g), slope)
    t, g = max(runs, key=lambda r: r[1])
    fixed = min(fallback_fixed, 0.9 * t)
    return TierCost(fixed, (t - fixed) / g)


class LatencyModel:
    """Thread-safe map (method, tier) -> uncontended cost: own figures × shared pace."""

    def __init__(self, alpha: float, default_seconds_per_gmac: float, overhead_seconds: float = 0.0) -> None:
        self.alpha = alpha
        self.default = TierCost(overhead_seconds, default_seconds_per_gmac)
        self.overhead = overhead_seconds
        self._costs: dict[Key, TierCost] = {}  # each tier's own figures at pace 1
        self._pace = 1.0
        self._calibrated: set[Key] = set()
        self._lock = threading.Lock()

    def set_prior(self, key: Key, seconds_per_gmac: float | None) -> None:
        """Prior from a per-GMAC figure (the manifest's); the fixed cost is the `overhead` setting."""
        with self._lock:
            rate = seconds_per_gmac if seconds_per_gmac else self.default.seconds_per_gmac
            self._costs[key] = TierCost(self.overhead, rate).scaled(1.0 / self._pace)

    def calibrate(self, key: Key, runs: list[tuple[float, float]], contention: float = 1.0) -> None:
        """Replace the prior with warm-up timings: (seconds, GMACs) at one or more sizes."""
        cost = fit_cost([(t / max(contention, 1.0), g) for t, g in runs], self.overhead)
        if cost is None:
            return
        with self._lock:
            self._costs[key] = cost.scaled(1.0 / self._pace)
            self._calibrated.add(key)

    def observe(self, key: Key, seconds: float, gmacs: float, contention: float = 1.0) -> TierCost:
        """Fold one served request into the pace and the tier's figures; returns its new cost."""
        if seconds < MIN_LEARNING_SECONDS or gmacs < 0:
            return self.cost(key)
        with self._lock:
            own = self._costs.get(key, self.default.scaled(1.0 / self._pace))
            predicted = own.seconds(gmacs) * self._pace
            error = math.log(seconds / max(contention, 1.0) / max(predicted, 1e-9))
            step = self.alpha * max(-math.log(MAX_STEP), min(math.log(MAX_STEP), error))
            self._pace *= math.exp(step)
            self._costs[key] = own.scaled(math.exp(TIER_SHARE * step))
            return self._costs[key].scaled(self._pace)

    def predict(self, key: Key, gmacs: float, contention: float = 1.0) -> float:
        """Seconds of compute for `gmacs` of work on this tier at this contention."""
        return self.cost(key).seconds(gmacs) * contention

    def cost(self, key: Key) -> TierCost:
        """The tier's cost now (its own figures at the current pace), uncontended."""
        with self._lock:
            return self._costs.get(key, self.default.scaled(1.0 / self._pace)).scaled(self._pace)

    def get(self, key: Key) -> float:
        """Seconds per GMAC now, uncontended."""
        return self.cost(key).seconds_per_gmac

    @property
    def pace(self) -> float:
        """How slow the machine runs now against when the tiers were calibrated (2 = twice as slow)."""
        with self._lock:
            return self._pace

    def calibrated(self, key: Key) -> bool:
        with self._lock:
            return key in self._calibrated

    def items(self) -> list[tuple[Key, float]]:
        """(key, seconds per GMAC now) of every tier."""
        with self._lock:
            return sorted((key, cost.seconds_per_gmac * self._pace) for key, cost in self._costs.items())
