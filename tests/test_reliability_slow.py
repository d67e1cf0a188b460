"""Long runs against a real uvicorn (marked slow): 60 s of overload at 5× capacity, and a bounded soak
showing no memory growth. Figures print as JSON lines (pytest -s) for tests/RELIABILITY.md."""

from __future__ import annotations

import collections
import json
import os
import threading
import time

import httpx
import pytest
from hostile_images import jpeg_bomb, png_bomb
from live_server import RssSampler, live_server
from overload import (
    assert_jobs_contract,
    assert_overload_contract,
    overload_seconds,
    run_jobs_overload,
    run_overload,
)
from service_support import image_bytes

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]
MIB = 1 << 20


def test_overload_60s_at_five_times_capacity() -> None:
    seconds = overload_seconds()
    with live_server(max_queue="16") as server:
        report, figures = run_overload(server, seconds=seconds)
        assert server.process.poll() is None
    print(json.dumps({"overload_seconds": seconds, **figures}))
    assert report.count(503) > 0 and report.count(200) > 0
    assert_overload_contract(report, figures)


def test_async_jobs_at_five_times_capacity_none_lost() -> None:
    """The in-process queue under open-loop job submissions: every accepted job ends and is fetched."""
    seconds = overload_seconds()
    with live_server(max_jobs="32") as server:
        report, figures = run_jobs_overload(server, seconds=seconds)
        assert server.process.poll() is None
    print(json.dumps({"jobs_overload_seconds": seconds, **figures}))
    assert_jobs_contract(report, figures)


def _soak_requests() -> list[tuple[str, bytes, str]]:
    """A mix of what the internet sends: good images of several sizes, junk, bombs, bad parameters."""
    good = [
        (f"scale={s}", image_bytes(w, h), "image/png")
        for s, (w, h) in [(2, (16, 16)), (1.7, (24, 12)), (3.3, (8, 20)), (4, (12, 12))]
    ]
    good.append(("scale=2&format=webp", image_bytes(16, 16, fmt="JPEG"), "image/jpeg"))
    bad = [
        ("scale=2", b"not an image", "image/png"),
        ("scale=2", png_bomb(), "image/png"),
        ("scale=2", jpeg_bomb(), "image/jpeg"),
        ("scale=nan", image_bytes(8, 8), "image/png"),
        ("scale=2", image_bytes(8, 8), "text/plain"),
    ]
    return good + bad


def test_soak_memory_stays_flat() -> None:
    """Two clients back to back for ELASTICSR_SOAK_SECONDS (default 600); RSS sampled every second.

    Growth is the median RSS of the last fifth minus that of the second fifth (the first fifth is
    warm-up: allocator pools and per-scale caches fill there).
    """
    seconds = float(os.environ.get("ELASTICSR_SOAK_SECONDS", "600"))
    mix = _soak_requests()
    statuses: collections.Counter = collections.Counter()
    lock = threading.Lock()
    with live_server(max_queue="16") as server:
        stop_at = time.monotonic() + seconds

        def client(offset: int) -> None:
            with httpx.Client(base_url=server.base, timeout=120) as http:
                i = offset
                while time.monotonic() < stop_at:
                    query, body, media = mix[i % len(mix)]
                    status = http.post(
                        f"/upscale?{query}", content=body, headers={"content-type": media}
                    ).status_code
                    if i % 7 == 0:
                        http.get("/models")
                        http.get("/metrics")
                    with lock:
                        statuses[status] += 1
                    i += 1

        with RssSampler(server, interval=1.0) as rss:
            threads = [threading.Thread(target=client, args=(k,)) for k in range(2)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        assert server.process.poll() is None
    early, late = rss.median_of(0.2, 0.4), rss.median_of(0.8, 1.0)
    figures = {
        "soak_seconds": seconds,
        "requests": sum(statuses.values()),
        "by_status": dict(sorted(statuses.items())),
        "rss_early_mib": round(early / MIB, 1),
        "rss_late_mib": round(late / MIB, 1),
        "rss_peak_mib": round(rss.peak / MIB, 1),
        "growth_mib": round((late - early) / MIB, 1),
    }
    print(json.dumps(figures))
    assert not [s for s in statuses if s >= 500 and s != 503], figures
    assert statuses[200] > 0
    assert late - early < 32 * MIB, figures
