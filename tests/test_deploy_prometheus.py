"""Prometheus rules and config: promtool accepts them, their unit tests pass, and they read only
metrics the service exports (a real /metrics scrape) or the pending queue metrics.

promtool comes from Debian's prometheus package (.ci/run installs it). The rules' behaviour (which
alert fires when, what it says) lives in deploy/prometheus/tests/elasticsr.test.yml.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml
from deploy_support import (
    PROMETHEUS,
    known_series,
    referenced_metrics,
    referenced_recordings,
    tool,
)

RULES = PROMETHEUS / "rules" / "elasticsr.rules.yml"


def promtool(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([tool("promtool"), *args], capture_output=True, text=True, cwd=PROMETHEUS)


def rules() -> list[dict]:
    return [rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]]


def test_promtool_checks_the_rules() -> None:
    out = promtool("check", "rules", str(RULES))
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"SUCCESS: {len(rules())} rules found" in out.stdout


def test_promtool_unit_tests_of_the_rules_pass() -> None:
    out = promtool("test", "rules", "tests/elasticsr.test.yml")
    assert out.returncode == 0, out.stdout + out.stderr


def test_promtool_unit_tests_would_catch_a_wrong_threshold(tmp_path: Path) -> None:
    """Guards the guard: the same unit tests fail against rules with a changed threshold."""
    (tmp_path / "rules").mkdir()
    (tmp_path / "tests").mkdir()
    text = RULES.read_text().replace(
        "elasticsr:shed:ratio_rate5m > 0.05", "elasticsr:shed:ratio_rate5m > 0.5"
    )
    assert text != RULES.read_text()
    (tmp_path / "rules" / RULES.name).write_text(text)
    (tmp_path / "tests" / "t.yml").write_text((PROMETHEUS / "tests" / "elasticsr.test.yml").read_text())
    out = subprocess.run(
        [tool("promtool"), "test", "rules", "tests/t.yml"], capture_output=True, text=True, cwd=tmp_path
    )
    assert out.returncode != 0 and "ElasticSRHighShedRate" in out.stdout + out.stderr


def test_every_alert_is_unit_tested() -> None:
    tested = {
        case["alertname"]
        for block in yaml.safe_load((PROMETHEUS / "tests" / "elasticsr.test.yml").read_text())["tests"]
        for case in block.get("alert_rule_test", [])
        if case.get("exp_alerts")  # a test that expects it to fire, not only to stay quiet
    }
    alerts = {rule["alert"] for rule in rules() if "alert" in rule}
    assert alerts <= tested, f"alerts never shown to fire: {alerts - tested}"


def test_issue_signals_have_alerts() -> None:
    """p99 latency, SLO burn, shed rate, queue age and quality drop each have an alert."""
    exprs = " ".join(rule["expr"] for rule in rules() if "alert" in rule)
    for needed in ("p99_5m", "slo_errors", "shed:ratio", "job_age_seconds", "predicted_psnr_db"):
        assert needed in exprs, needed


def test_rules_read_only_exported_metrics_and_defined_recordings() -> None:
    recorded = {rule["record"] for rule in rules() if "record" in rule}
    known = known_series()
    for rule in rules():
        name = rule.get("record") or rule["alert"]
        assert referenced_metrics(rule["expr"]) <= known.keys(), (
            name,
            referenced_metrics(rule["expr"]) - known.keys(),
        )
        assert referenced_recordings(rule["expr"]) <= recorded, name


def test_local_stack_prometheus_config_is_valid() -> None:
    out = promtool("check", "config", "prometheus.yml")
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.parametrize("job", ["elasticsr-api", "elasticsr-worker"])
def test_local_and_kubernetes_scrapes_name_jobs_alike(job: str) -> None:
    """Rules and dashboard see the same `job` labels locally and in Kubernetes."""
    local = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())
    assert job in {c["job_name"] for c in local["scrape_configs"]}
    (k8s,) = yaml.safe_load((PROMETHEUS / "kubernetes.yml").read_text())["scrape_configs"]
    relabel = next(r for r in k8s["relabel_configs"] if r.get("target_label") == "job")
    assert relabel["replacement"].replace("$1", job.removeprefix("elasticsr-")) == job
