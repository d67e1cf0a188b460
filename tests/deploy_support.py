"""Shared helpers for the deploy tests: where files are, which tools run, which metrics exist.

A tool the tests need is looked up next to the test interpreter first (the dev extra installs
kubectl, hadolint and kubernetes-validate into the virtual environment), then on PATH. When one is
missing, the test fails under CI (`.ci/run` installs every one of them, so a gap there is a bug) and
is skipped on a developer's machine.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
DEPLOY = REPO / "deploy"
DOCKER = REPO / "docker"
PROMETHEUS = DEPLOY / "prometheus"
GRAFANA = DEPLOY / "grafana"

# Queue metrics promised by the job-queue issue (exported by `python -m service.worker`). Until that
# lands they cannot be read from the service, so they are allowed by name here; once the service
# exports them they are checked like every other metric and can be dropped from this set.
PENDING_QUEUE_METRICS = {
    "elasticsr_jobs_total": "counter",
    "elasticsr_job_age_seconds": "gauge",
    "elasticsr_worker_busy_seconds_total": "counter",
}

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


def service_series() -> dict[str, str]:
    """Every series name the service exports (`name_bucket`, `name_total`, …) -> metric type.

    Read from the service's own metrics registry, so a renamed or removed metric breaks the
    dashboard and rule tests instead of leaving an empty panel in production.
    """
    from service.metrics import Metrics

    series: dict[str, str] = {}
    for family in Metrics().registry.collect():
        if not family.name.startswith("elasticsr_"):
            continue  # process_* collector metrics are not part of the contract
        base = family.name.removesuffix("_total")  # prometheus-client strips it from counters
        for suffix in _SUFFIXES.get(family.type, ("",)):
            series[base + suffix] = family.type
    return series


def known_series() -> dict[str, str]:
    """Exported series plus the queue metrics still pending (see PENDING_QUEUE_METRICS)."""
    series = service_series()
    for name, kind in PENDING_QUEUE_METRICS.items():
        base = name.removesuffix("_total")
        if not any(s.startswith(base) for s in series):
            series.update({base + s: kind for s in _SUFFIXES[kind]})
    return series


_METRIC = re.compile(r"\belasticsr_[a-z0-9_]+")
_RECORDED = re.compile(r"\belasticsr:[a-zA-Z0-9_:]+")


def referenced_metrics(promql: str) -> set[str]:
    """Raw metric names (`elasticsr_…`) a PromQL expression reads."""
    return set(_METRIC.findall(promql))


def referenced_recordings(promql: str) -> set[str]:
    """Recording-rule names (`elasticsr:…`) a PromQL expression reads."""
    return set(_RECORDED.findall(promql))
