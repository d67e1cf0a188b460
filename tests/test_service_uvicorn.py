"""`python -m service` as a real process: uvicorn on 127.0.0.1, configured only by environment."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import httpx
import pytest
from service_support import checkpoint_dir, decoded, image_bytes


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    port = free_port()
    env = {
        **os.environ,
        "ELASTICSR_PORT": str(port),
        "ELASTICSR_CHECKPOINT_DIR": str(checkpoint_dir()),
        "ELASTICSR_METHODS": "ssrno",
        "ELASTICSR_DEVICE": "cpu",
        "ELASTICSR_TORCH_THREADS": "1",
        "ELASTICSR_WARMUP_SIZE": "8",
        "ELASTICSR_LOG_LEVEL": "warning",
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "service"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            assert process.poll() is None, process.stdout.read() if process.stdout else "server exited"
            try:
                if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        else:
            pytest.fail("server did not become ready in 120 s")
        yield base
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def test_real_server_upscales(server: str) -> None:
    response = httpx.post(
        f"{server}/upscale?scale_x=2.5&scale_y=1.5&tier=XS",
        content=image_bytes(8, 8),
        headers={"content-type": "image/png"},
        timeout=60,
    )
    assert response.status_code == 200, response.text
    assert decoded(response.content).size == (20, 12)
    assert response.headers["x-elasticsr-method"] == "ssrno"
    assert httpx.get(f"{server}/healthz").json() == {"status": "ok"}


def test_real_server_errors_and_metrics(server: str) -> None:
    response = httpx.post(f"{server}/upscale?scale=2", content=b"junk", headers={"content-type": "image/png"})
    assert response.status_code == 400 and response.json()["code"] == "undecodable_image"
    metrics = httpx.get(f"{server}/metrics").text
    assert "elasticsr_requests_total" in metrics and "elasticsr_tier_latency_seconds_per_gmac" in metrics
    if shutil.which("promtool"):
        check = subprocess.run(
            ["promtool", "check", "metrics"], input=metrics, capture_output=True, text=True
        )
        assert check.returncode == 0, check.stdout + check.stderr
