"""How far measured times stray from predicted ones, as a ratio with a mean and a spread.

The latency model predicts the mean; the deadline is about the tail. Like TCP's retransmission
timer (RFC 6298: SRTT + 4·RTTVAR), we keep an EWMA of measured ÷ predicted and an EWMA of its
absolute deviation, and plan with `mean + k·deviation`: a request admitted on that bound finishes
in time unless this moment is k deviations worse than usual.
"""

from __future__ import annotations

MIN_RATIO, MAX_RATIO = 0.5, 4.0  # one sample (a page fault, a stalled loop) moves the estimate a bounded step


class RatioEstimate:
    """EWMA mean and mean absolute deviation of measured ÷ predicted (not thread-safe: one owner)."""

    def __init__(self, alpha: float = 0.125, beta: float = 0.25) -> None:
        self.alpha, self.beta = alpha, beta
        self.mean = 1.0
        self.deviation = 0.0
        self.samples = 0

    def observe(self, predicted: float, measured: float) -> None:
        ratio = min(max(measured / predicted, MIN_RATIO), MAX_RATIO)
        self.deviation += self.beta * (abs(ratio - self.mean) - self.deviation)
        self.mean += self.alpha * (ratio - self.mean)
        self.samples += 1

    def bound(self, deviations: float) -> float:
        """The factor to multiply a prediction by so that it is rarely exceeded."""
        return min(max(self.mean + deviations * self.deviation, MIN_RATIO), MAX_RATIO)
