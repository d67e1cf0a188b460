"""`python -m service` as a real process: uvicorn on 127.0.0.1, configured only by environment."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator

import httpx
import pytest
from live_server import live_server
from service_support import decoded, image_bytes


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    with live_server(log_level="warning") as running:
        yield running.base


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
