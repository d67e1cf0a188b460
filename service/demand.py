"""How much compute the arriving requests ask for: the rate side of the controller's choice.

Each deadline check sees one request, and under a sustained spike every request can still fit
its own deadline with a richer tier than the machine can clear at that arrival rate: the backlog
then sits at the deadline and the excess is shed. So the service also measures demand: the
compute that the requests of the last few seconds would need if each ran at its cheapest
candidate, per second and per worker. Above 1, even the cheapest tiers cannot keep up.
"""

from __future__ import annotations

import threading
import time
from collections import deque


class DemandMeter:
    """Sliding-window sum of the cheapest predicted compute of arriving requests."""

    def __init__(self, window_seconds: float = 5.0) -> None:
        if window_seconds <= 0:
            raise ValueError("window_seconds must be positive")
        self.window = window_seconds
        self._arrivals: deque[tuple[float, float]] = deque()  # (time.monotonic(), seconds)
        self._sum = 0.0
        self._lock = threading.Lock()  # job workers and the event loop may both record

    def record(self, cheapest_seconds: float, now: float | None = None) -> None:
        """A request arrived whose cheapest candidate would take this many seconds of compute."""
        now = time.monotonic() if now is None else now
        with self._lock:
            self._arrivals.append((now, max(0.0, cheapest_seconds)))
            self._sum += max(0.0, cheapest_seconds)
            self._expire(now)

    def utilization(self, workers: int, now: float | None = None) -> float:
        """Cheapest compute asked for per second of the window, per worker (0 = idle)."""
        now = time.monotonic() if now is None else now
        with self._lock:
            self._expire(now)
            return max(0.0, self._sum) / self.window / max(1, workers)

    def _expire(self, now: float) -> None:
        while self._arrivals and self._arrivals[0][0] <= now - self.window:
            self._sum -= self._arrivals.popleft()[1]
        if not self._arrivals:
            self._sum = 0.0  # no float drift left behind once the window empties
