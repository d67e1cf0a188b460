"""Start `python -m service` on 127.0.0.1 with one policy, wait until ready, stop it afterwards.

A real uvicorn process (not an in-process ASGI app) so the load generator and the service do not
share an event loop or a GIL, as in production. Its log goes to a file next to the results.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServiceFailed(RuntimeError):
    """The service exited or never became ready."""


@contextlib.contextmanager
def running_service(
    policy: str,
    checkpoint_dir: Path,
    methods: list[str],
    log_path: Path,
    extra_env: dict[str, str] | None = None,
    ready_timeout_s: float = 600.0,
) -> Iterator[str]:
    """Yields the base URL of a ready service; the process is stopped on exit, whatever happened."""
    port = free_port()
    env = os.environ | {
        "ELASTICSR_HOST": "127.0.0.1",
        "ELASTICSR_PORT": str(port),
        "ELASTICSR_POLICY": policy,
        "ELASTICSR_CHECKPOINT_DIR": str(checkpoint_dir),
        "ELASTICSR_METHODS": ",".join(methods),
        "ELASTICSR_LOG_LEVEL": "warning",
        **(extra_env or {}),
    }
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        process = subprocess.Popen([sys.executable, "-m", "service"], env=env, stdout=log, stderr=log)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(process, url, ready_timeout_s, log_path)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _wait_ready(process: subprocess.Popen, url: str, timeout_s: float, log_path: Path) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise ServiceFailed(f"service exited with {process.returncode}; see {log_path}")
        with contextlib.suppress(httpx.TransportError):
            response = httpx.get(f"{url}/readyz", timeout=5)
            if response.status_code == 200:
                return
            if (response.json().get("detail") or {}).get("state") == "failed":
                raise ServiceFailed(f"service could not load a model: {response.text}; see {log_path}")
        time.sleep(0.5)
    raise ServiceFailed(f"service not ready after {timeout_s:.0f} s; see {log_path}")
