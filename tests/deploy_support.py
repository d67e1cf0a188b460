"""Shared helpers for the deploy tests: where files are, which tools run, which metrics exist.

A tool the tests need is looked up next to the test interpreter first (the dev extra installs
kubectl, hadolint and kubernetes-validate into the virtual environment), then on PATH. When one is
missing, the test fails under CI (`.ci/run` installs every one of them, so a gap there is a bug) and
is skipped on a developer's machine.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import sys
from pathlib import Path

import anyio
import pytest
from prometheus_client.parser import text_string_to_metric_families

REPO = Path(__file__).resolve().parent.parent
DEPLOY = REPO / "deploy"
DOCKER = REPO / "docker"
PROMETHEUS = DEPLOY / "prometheus"
GRAFANA = DEPLOY / "grafana"

_SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}


def tool(name: str) -> str:
    """Absolute path of a command-line tool, or fail (CI) / skip (elsewhere) when it is absent."""
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.exists() else shutil.which(name)
    if found:
        return found
    message = f"{name} not found (.ci/run installs it)"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


async def _scrape() -> str:
    from service_support import image_bytes, make_settings, served

    async with served(make_settings(methods=["ssrno"])) as (_, client):
        # One answered request, so every series a request touches exists in the scrape.
        ok = await client.post(
            "/upscale?scale=2", content=image_bytes(8, 8), headers={"content-type": "image/png"}
        )
        assert ok.status_code == 200, ok.text
        response = await client.get("/metrics")
        assert response.status_code == 200
        return response.text


@functools.cache
def metrics_scrape() -> str:
    """The text of GET /metrics from a real app (untrained test checkpoint, one upscale served)."""
    return anyio.run(_scrape)


@functools.cache
def service_series() -> dict[str, str]:
    """Every series name the running service exports (`name_bucket`, `name_total`, …) -> type.

    Read from a real /metrics scrape, so a renamed or removed metric breaks the dashboard, rule and
    autoscaling tests instead of leaving an empty panel or a dead alert in production. Families are
    expanded by type, so a labelled metric with no sample yet still counts.
    """
    series: dict[str, str] = {}
    for family in text_string_to_metric_families(metrics_scrape()):
        if not family.name.startswith("elasticsr_"):
            continue  # process_* collector metrics are not part of the contract
        for suffix in _SUFFIXES.get(family.type, ("",)):
            series[family.name + suffix] = family.type
    return series


def known_settings() -> set[str]:
    """Every ELASTICSR_* variable the service reads (a misspelt one would be silently ignored)."""
    from service.settings import Settings

    return {f"ELASTICSR_{name.upper()}" for name in Settings.model_fields}


def known_series() -> dict[str, str]:
    """Every series the service exports (API and worker share one Metrics class)."""
    return dict(service_series())


_METRIC = re.compile(r"\belasticsr_[a-z0-9_]+")
_RECORDED = re.compile(r"\belasticsr:[a-zA-Z0-9_:]+")


def referenced_metrics(promql: str) -> set[str]:
    """Raw metric names (`elasticsr_…`) a PromQL expression reads."""
    return set(_METRIC.findall(promql))


def referenced_recordings(promql: str) -> set[str]:
    """Recording-rule names (`elasticsr:…`) a PromQL expression reads."""
    return set(_RECORDED.findall(promql))
