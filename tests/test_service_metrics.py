"""/metrics: the contract's names and labels are there after real traffic, and promtool accepts them."""

from __future__ import annotations

import shutil
import subprocess

import pytest
from prometheus_client.parser import text_string_to_metric_families
from service_support import image_bytes, make_settings, served

pytestmark = pytest.mark.anyio
PNG = {"content-type": "image/png"}

CONTRACT = {
    "elasticsr_request_duration_seconds": "histogram",
    "elasticsr_queue_wait_seconds": "histogram",
    "elasticsr_compute_seconds": "histogram",
    "elasticsr_inflight_requests": "gauge",
    "elasticsr_tier_choices": "counter",
    "elasticsr_predicted_psnr_db": "histogram",
    "elasticsr_output_megapixels": "histogram",
    "elasticsr_shed_requests": "counter",
    "elasticsr_requests": "counter",
    "elasticsr_load_cpu_utilization_ratio": "gauge",
    "elasticsr_load_memory_bytes": "gauge",
    "elasticsr_load_gpu_utilization_ratio": "gauge",
    "elasticsr_load_gpu_memory_bytes": "gauge",
    "elasticsr_queue_depth": "gauge",
    "elasticsr_tier_latency_seconds_per_gmac": "gauge",
    "elasticsr_demand_ratio": "gauge",
}


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
async def exposition(anyio_backend: str) -> str:
    """The /metrics text after one served, one refused and one shed request."""
    async with served(make_settings(methods=["ssrno"])) as (_, client):
        ok = await client.post("/upscale?scale=2&tier=XS", content=image_bytes(8, 8), headers=PNG)
        assert ok.status_code == 200, ok.text
        bad = await client.post("/upscale?scale=nan", content=image_bytes(8, 8), headers=PNG)
        assert bad.status_code == 422
        shed = await client.post("/upscale?scale=2&method=anysr", content=image_bytes(8, 8), headers=PNG)
        assert shed.status_code == 503
        response = await client.get("/metrics")
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/plain")
        return response.text


def samples(text: str) -> dict[str, list]:
    found: dict[str, list] = {}
    for family in text_string_to_metric_families(text):
        found.setdefault(family.name, []).extend(family.samples)
    return found


def value(found: dict[str, list], sample_name: str, **labels: str) -> float:
    family = sample_name.removesuffix("_total").removesuffix("_count").removesuffix("_sum")
    for sample in found[family]:
        if sample.name == sample_name and all(sample.labels.get(k) == v for k, v in labels.items()):
            return sample.value
    raise AssertionError(f"no sample {sample_name}{labels}")


def test_contract_metrics_are_exposed_with_their_types(exposition: str) -> None:
    types = {f.name: f.type for f in text_string_to_metric_families(exposition)}
    for name, kind in CONTRACT.items():
        assert types.get(name) == kind, f"{name}: {types.get(name)}"


def test_metrics_record_the_traffic(exposition: str) -> None:
    found = samples(exposition)
    ok = {"method": "ssrno", "tier": "XS"}
    assert value(found, "elasticsr_request_duration_seconds_count", outcome="ok", **ok) == 1
    assert value(found, "elasticsr_compute_seconds_count", **ok) == 1
    assert value(found, "elasticsr_tier_choices_total", **ok) == 1
    assert value(found, "elasticsr_predicted_psnr_db_count", **ok) == 1
    assert value(found, "elasticsr_queue_wait_seconds_count") == 1
    assert value(found, "elasticsr_output_megapixels_count") == 1
    assert value(found, "elasticsr_requests_total", outcome="ok", code="ok") == 1
    assert value(found, "elasticsr_requests_total", outcome="client_error", code="invalid_parameter") == 1
    assert value(found, "elasticsr_requests_total", outcome="shed", code="no_model_available") == 1
    assert value(found, "elasticsr_shed_requests_total", reason="no_model_available") == 1
    assert value(found, "elasticsr_shed_requests_total", reason="deadline") == 0  # pre-created
    assert value(found, "elasticsr_inflight_requests") == 0
    assert value(found, "elasticsr_load_memory_bytes") > 0
    assert value(found, "elasticsr_tier_latency_seconds_per_gmac", method="ssrno", tier="X") > 0
    # Every tier's series exists before it is ever chosen.
    assert value(found, "elasticsr_tier_choices_total", method="ssrno", tier="L") == 0


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed (CI installs it)")
def test_promtool_check_metrics_passes(exposition: str) -> None:
    result = subprocess.run(
        ["promtool", "check", "metrics"], input=exposition, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == "" and result.stderr.strip() == "", result.stdout + result.stderr
