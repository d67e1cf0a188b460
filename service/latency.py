"""Per-tier latency model: seconds of compute per GMAC, learned from this machine.

MACs are what a tier costs on paper (`model.macs`); seconds per GMAC is what this machine makes of
them. The prior comes from the manifest's timing (or a default), warm-up replaces it with a
measurement, and served requests correct it, so the model follows the hardware and thermal state
instead of trusting numbers measured elsewhere.

Predicted compute = fixed per-request overhead + GMACs × seconds per GMAC. The overhead (model
set-up, first chunk, copies) is a setting; without it small requests, where it dominates, would
teach the model that every GMAC is slow. Observations of tiny requests are not learned from,
and one observation moves the estimate at most by a factor of 4 (a cold cache or a page fault
must not make a tier look unusable).

Seconds per GMAC = the tier's own rate × the machine's *pace*, one factor shared by every tier.
Under load the served requests slow down together (HTTP, image decoding and encoding take the
same cores), but only the tiers being served are observed. Were each tier learned alone, those
would look ever slower while tiers not served kept their idle figures, and the controller would
move to tiers that only look cheap because nobody ran them lately. So each observation moves the
shared pace (`alpha`, in log space) and, by a quarter of that step, the observed tier's own rate,
which corrects a tier whose warm-up figure was off without taking up the machine's slowdown.

Values are stored *uncontended*: an observation made while other processes loaded the CPU is
divided by the contention factor of that moment, and predictions multiply it back in.
"""

from __future__ import annotations

import math
import threading
from typing import Any

from models.manifest import tier_entry

Key = tuple[str, str]  # (method, tier)

# Manifest timings are for a square input whose side the manifest records (128 by convention).
_MANIFEST_LR_SIDE = 128
# Requests smaller than this measure overhead more than throughput.
MIN_LEARNING_GMACS = 0.25
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


class LatencyModel:
    """Thread-safe map (method, tier) -> uncontended seconds per GMAC: own rate × shared pace."""

    def __init__(self, alpha: float, default_seconds_per_gmac: float, overhead_seconds: float = 0.0) -> None:
        self.alpha = alpha
        self.default = default_seconds_per_gmac
        self.overhead = overhead_seconds
        self._rates: dict[Key, float] = {}  # each tier's seconds per GMAC at pace 1
        self._pace = 1.0
        self._calibrated: set[Key] = set()
        self._lock = threading.Lock()

    def set_prior(self, key: Key, seconds_per_gmac: float | None) -> None:
        with self._lock:
            self._rates[key] = (seconds_per_gmac if seconds_per_gmac else self.default) / self._pace

    def _sample(self, seconds: float, gmacs: float, contention: float) -> float:
        return max(seconds - self.overhead, 0.1 * seconds) / gmacs / max(contention, 1.0)

    def calibrate(self, key: Key, seconds: float, gmacs: float, contention: float = 1.0) -> None:
        """Replace the prior with a warm-up measurement."""
        if gmacs <= 0 or seconds <= 0:
            return
        with self._lock:
            self._rates[key] = self._sample(seconds, gmacs, contention) / self._pace
            self._calibrated.add(key)

    def observe(self, key: Key, seconds: float, gmacs: float, contention: float = 1.0) -> float:
        """Fold one served request into the pace and the tier's rate; returns the tier's new value."""
        if gmacs < MIN_LEARNING_GMACS or seconds <= 0:
            return self.get(key)
        with self._lock:
            rate = self._rates.get(key, self.default / self._pace)
            error = math.log(self._sample(seconds, gmacs, contention) / (rate * self._pace))
            step = self.alpha * max(-math.log(MAX_STEP), min(math.log(MAX_STEP), error))
            self._pace *= math.exp(step)
            self._rates[key] = rate * math.exp(TIER_SHARE * step)
            return self._rates[key] * self._pace

    def predict(self, key: Key, gmacs: float, contention: float = 1.0) -> float:
        """Seconds of compute for `gmacs` of work on this tier at this contention."""
        return self.overhead + gmacs * self.get(key) * contention

    def get(self, key: Key) -> float:
        with self._lock:
            return self._rates.get(key, self.default / self._pace) * self._pace

    @property
    def pace(self) -> float:
        """How slow the machine runs now against when the tiers were calibrated (2 = twice as slow)."""
        with self._lock:
            return self._pace

    def calibrated(self, key: Key) -> bool:
        with self._lock:
            return key in self._calibrated

    def items(self) -> list[tuple[Key, float]]:
        with self._lock:
            return sorted((key, rate * self._pace) for key, rate in self._rates.items())
