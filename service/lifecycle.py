"""Graceful shutdown under uvicorn: on SIGTERM, first turn /readyz to 503, then stop listening.

A balancer (Kubernetes endpoints, an ingress) notices an unready pod only at its next probe, so for
`drain_seconds` the service keeps answering everything while /readyz says 503; then uvicorn stops
accepting connections and lets in-flight requests finish (up to `graceful_timeout_s`). A second
SIGTERM, or Ctrl-C (SIGINT, for a developer's terminal), skips the drain.
"""

from __future__ import annotations

import logging
import signal
import threading
from types import FrameType

import uvicorn
from fastapi import FastAPI

log = logging.getLogger(__name__)


class DrainingServer(uvicorn.Server):
    """uvicorn.Server whose first SIGTERM drains before the usual graceful shutdown."""

    def __init__(self, config: uvicorn.Config, app: FastAPI, drain_seconds: float) -> None:
        super().__init__(config)
        self.app = app
        self.drain_seconds = drain_seconds
        self._timer: threading.Timer | None = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if sig != signal.SIGTERM or self.drain_seconds <= 0 or self._timer is not None:
            super().handle_exit(sig, frame)
            return
        self.app.state.draining = True
        log.info("SIGTERM: /readyz answers 503; closing the listener in %.1f s", self.drain_seconds)
        # A timer thread, not the event loop: this runs inside a signal handler.
        self._timer = threading.Timer(self.drain_seconds, super().handle_exit, (sig, frame))
        self._timer.daemon = True
        self._timer.start()
