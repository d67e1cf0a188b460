"""Property-based fuzzing of the whole HTTP API from its own OpenAPI document (schemathesis).

Every operation gets schema-valid and (for /upscale) schema-violating requests; half of the valid
/upscale cases carry a real small image instead of random bytes, so the model path is fuzzed too.
Each response must not be a 5xx, and its status, content type, headers and body must match the
schema. The fast run is in-process (ASGI); the slow run sends ≥ 10,000 requests to a real uvicorn.
"""

from __future__ import annotations

import collections
import json
import os
import time
from collections.abc import Callable

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import seed as hypothesis_seed
from hypothesis import strategies as st
from live_server import RssSampler, live_server
from schemathesis import checks as generic_checks
from schemathesis.generation import GenerationMode
from schemathesis.specs.openapi import checks as openapi_checks
from service_support import caching_loader, image_bytes, make_settings

from service.app import create_app

CHECKS = [
    generic_checks.not_a_server_error,
    openapi_checks.status_code_conformance,
    openapi_checks.content_type_conformance,
    openapi_checks.response_headers_conformance,
    openapi_checks.response_schema_conformance,
]
NEGATIVE_CHECKS = [*CHECKS, openapi_checks.negative_data_rejection]  # invalid requests must get a 4xx
MODES = {"jpeg": ("JPEG", "image/jpeg"), "png": ("PNG", "image/png"), "webp": ("WEBP", "image/webp")}


@st.composite
def real_images(draw: st.DrawFn) -> tuple[bytes, str]:
    fmt, media = MODES[draw(st.sampled_from(sorted(MODES)))]
    mode = draw(st.sampled_from(["RGB", "L", "RGBA", "P"] if fmt != "JPEG" else ["RGB", "L", "CMYK"]))
    width, height = draw(st.integers(1, 12)), draw(st.integers(1, 12))
    return image_bytes(width, height, mode, fmt), media


def _runner(operation, mode: GenerationMode, examples: int, call: Callable, stats, seed: int | None):
    upscale = operation.label == "POST /upscale"

    @given(data=st.data())
    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        derandomize=seed is None,
        suppress_health_check=list(HealthCheck),
    )
    def run(data: st.DataObject) -> None:
        case = data.draw(operation.as_strategy(generation_mode=mode))
        if upscale and mode is GenerationMode.POSITIVE and data.draw(st.booleans()):
            case.body, case.media_type = data.draw(real_images())
        response = call(case)
        stats[(operation.label, mode.value, response.status_code)] += 1
        case.validate_response(response, checks=NEGATIVE_CHECKS if mode.is_negative else CHECKS)

    return run if seed is None else hypothesis_seed(seed)(run)


def fuzz(schema, upscale_examples: int, call: Callable, seed: int | None = None) -> collections.Counter:
    """Run every operation; returns counts by (operation, mode, status). Raises on the first failure."""
    stats: collections.Counter = collections.Counter()
    for result in schema.get_all_operations():
        operation = result.ok()
        if operation.label == "POST /upscale":
            for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
                _runner(operation, mode, upscale_examples // 2, call, stats, seed)()
        else:  # no parameters: a few valid calls (nothing to make invalid)
            _runner(operation, GenerationMode.POSITIVE, 10, call, stats, seed)()
    return stats


def report(stats: collections.Counter, **extra: object) -> dict:
    statuses: collections.Counter = collections.Counter()
    for (_, _, status), n in stats.items():
        statuses[status] += n
    figures = {
        "requests": sum(stats.values()),
        "upscale_requests": sum(n for (label, _, _), n in stats.items() if label == "POST /upscale"),
        "ok_200": statuses[200],
        "server_errors_5xx": sum(n for s, n in statuses.items() if s >= 500),
        "by_status": dict(sorted(statuses.items())),
        **extra,
    }
    print(json.dumps(figures))
    return figures


def test_fuzz_api_in_process() -> None:
    app = create_app(make_settings(methods=["ssrno"]), loader=caching_loader)
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)  # starts the app's lifespan
    deadline = time.monotonic() + 120
    while app.state.runtime.state != "ready":
        assert time.monotonic() < deadline and app.state.runtime.state != "failed"
        time.sleep(0.05)
    stats = fuzz(schema, upscale_examples=200, call=lambda case: case.call())
    figures = report(stats)
    assert figures["upscale_requests"] >= 200 and figures["server_errors_5xx"] == 0
    assert figures["ok_200"] > 0  # the real-image cases reached the model


@pytest.mark.slow
@pytest.mark.timeout(1800)  # ~12 requests/s on the shared 2-core machine
def test_fuzz_api_against_uvicorn_10k() -> None:
    """≥ 10,000 generated requests to a real server (ELASTICSR_FUZZ_EXAMPLES to change the count)."""
    examples = int(os.environ.get("ELASTICSR_FUZZ_EXAMPLES", "10000"))
    with live_server(max_queue="64") as server:
        schema = schemathesis.openapi.from_url(f"{server.base}/openapi.json")
        baseline = server.rss()
        started = time.monotonic()
        with RssSampler(server, interval=0.5) as rss:
            stats = fuzz(
                schema, examples, call=lambda case: case.call(base_url=server.base, timeout=120), seed=1
            )
        assert server.process.poll() is None
        figures = report(
            stats,
            seconds=round(time.monotonic() - started),
            rss_baseline_mib=baseline >> 20,
            rss_peak_mib=rss.peak >> 20,
        )
    assert figures["upscale_requests"] >= examples and figures["server_errors_5xx"] == 0
