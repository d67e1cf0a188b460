"""A real `python -m service` process for the reliability tests: uvicorn on a free port, configured
only through `ELASTICSR_*` variables, its log in a file, its resident memory sampled with psutil.

Untrained test checkpoints (service_support) keep it independent of trained weights.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil
from service_support import checkpoint_dir


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class LiveServer:
    base: str
    process: subprocess.Popen
    log_path: Path

    @property
    def port(self) -> int:
        return int(self.base.rsplit(":", 1)[1])

    def rss(self) -> int:
        return psutil.Process(self.process.pid).memory_info().rss

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@dataclass
class RssSampler:
    """Samples a process's RSS in a thread, every `interval` seconds, while in a `with` block."""

    server: LiveServer
    interval: float = 0.05
    samples: list[int] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    def _run(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(psutil.Error):
                self.samples.append(self.server.rss())
            self._stop.wait(self.interval)

    def __enter__(self) -> RssSampler:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def peak(self) -> int:
        return max(self.samples)

    def median_of(self, start: float, end: float) -> float:
        """Median RSS over a fraction [start, end) of the samples (e.g. the first or last fifth)."""
        n = len(self.samples)
        return statistics.median(self.samples[int(n * start) : max(int(n * start) + 1, int(n * end))])


def wait_ready(base: str, process: subprocess.Popen, log_path: Path, timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}:\n{log_path.read_text()}")
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                return
        time.sleep(0.2)
    raise TimeoutError(f"server not ready in {timeout:.0f} s:\n{log_path.read_text()}")


def start_server(**settings: str) -> LiveServer:
    """Start the service with test checkpoints; `settings` are ELASTICSR_* names without the prefix."""
    port = free_port()
    env = {
        **os.environ,
        "ELASTICSR_PORT": str(port),
        "ELASTICSR_CHECKPOINT_DIR": str(checkpoint_dir()),
        "ELASTICSR_METHODS": "ssrno",
        "ELASTICSR_DEVICE": "cpu",
        "ELASTICSR_TORCH_THREADS": "1",
        "ELASTICSR_WARMUP_SIZE": "8",
        "ELASTICSR_LOG_LEVEL": "info",
    }
    env.update({f"ELASTICSR_{k.upper()}": v for k, v in settings.items()})
    fd, name = tempfile.mkstemp(prefix="elasticsr-live-", suffix=".log")
    log_path = Path(name)
    with os.fdopen(fd, "wb") as log_file:  # the child keeps its own copy of the descriptor
        process = subprocess.Popen(
            [sys.executable, "-m", "service"], env=env, stdout=log_file, stderr=subprocess.STDOUT
        )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(base, process, log_path)
    except BaseException:
        stop_server(LiveServer(base, process, log_path))
        raise
    return LiveServer(base, process, log_path)


def stop_server(server: LiveServer) -> None:
    if server.process.poll() is None:
        server.process.send_signal(signal.SIGINT)
        try:
            server.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.process.kill()
            server.process.wait()


@contextlib.contextmanager
def live_server(**settings: str) -> Iterator[LiveServer]:
    server = start_server(**settings)
    try:
        yield server
    finally:
        stop_server(server)
        server.log_path.unlink(missing_ok=True)
