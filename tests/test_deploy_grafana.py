"""Grafana dashboard and provisioning: the committed JSON is what dashboard.py generates, it works
under file provisioning (`${datasource}` variable, no `__inputs`), it has the panels the issue
asks for, every query reads metrics the service really exports, and a real Prometheus evaluates
every query.

No Grafana server can be installed here; the live check runs Debian's `prometheus` against the
app's real /metrics text (from deploy_support.metrics_scrape) with our rules loaded, and evaluates
each panel query with the dashboard variables filled in as Grafana would.
"""

from __future__ import annotations

import http.server
import importlib.util
import json
import re
import socket
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from deploy_support import (
    GRAFANA,
    PROMETHEUS,
    REPO,
    known_series,
    metrics_scrape,
    referenced_metrics,
    referenced_recordings,
    service_series,
    tool,
)

DASHBOARD = GRAFANA / "dashboards" / "elasticsr.json"
DS = {"type": "prometheus", "uid": "${datasource}"}


def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def panels() -> list[dict]:
    return [p for p in dashboard()["panels"] if p["type"] != "row"]


def queries() -> list[tuple[str, str]]:
    """(panel title, expr) for every query of every panel."""
    return [(p["title"], t["expr"]) for p in panels() for t in p["targets"]]


def recorded() -> set[str]:
    groups = yaml.safe_load((PROMETHEUS / "rules" / "elasticsr.rules.yml").read_text())["groups"]
    return {rule["record"] for group in groups for rule in group["rules"] if "record" in rule}


def test_committed_json_is_what_the_generator_writes() -> None:
    spec = importlib.util.spec_from_file_location("dashboard", GRAFANA / "dashboard.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert DASHBOARD.read_text() == module.render(), "run: python deploy/grafana/dashboard.py"


def test_dashboard_uses_the_datasource_variable_everywhere() -> None:
    board = dashboard()
    assert "__inputs" not in board  # resolved only by the UI import, never by provisioning
    assert board["id"] is None and board["uid"] == "elasticsr-overview"
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert (
        variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    )
    for p in panels():
        assert p["datasource"] == DS, p["title"]
        for t in p["targets"]:
            assert t["datasource"] == DS, p["title"]
    for v in variables.values():
        if v["type"] == "query":
            assert v["datasource"] == DS, v["name"]
    # No hard-coded data source uid sneaks in anywhere (e.g. a panel pasted from the UI).
    uids = set(re.findall(r'"uid":\s*"([^"]*)"', DASHBOARD.read_text())) - {board["uid"]}
    assert uids == {"${datasource}"}


def test_dashboard_has_the_panels_users_asked_for() -> None:
    titles = {p["title"]: p for p in panels()}
    asked = {
        "Latency percentiles by tier": "elasticsr_request_duration_seconds_bucket",
        "Tier mix": "elasticsr_tier_choices_total",
        "Predicted quality over time": "elasticsr_predicted_psnr_db_sum",
        "Latency vs predicted quality by tier": "elasticsr_predicted_psnr_db_sum",
        "CPU and GPU utilisation": "elasticsr_load_cpu_utilization_ratio",
        "Queue depth": "elasticsr_queue_depth",
        "Shed requests by reason": "elasticsr_shed_requests_total",
    }
    for title, metric in asked.items():
        assert title in titles, title
        read = set().union(*(referenced_metrics(t["expr"]) for t in titles[title]["targets"]))
        assert metric in read, (title, read)
    assert titles["Latency vs predicted quality by tier"]["type"] == "xychart"
    assert titles["Predicted PSNR distribution"]["type"] == "heatmap"
    by_tier = " ".join(t["expr"] for t in titles["Latency percentiles by tier"]["targets"])
    assert "histogram_quantile(0.99" in by_tier and "method, tier" in by_tier


def test_panels_do_not_overlap() -> None:
    cells: set[tuple[int, int]] = set()
    for p in dashboard()["panels"]:
        g = p["gridPos"]
        assert g["x"] + g["w"] <= 24
        mine = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
        assert not cells & mine, p["title"]
        cells |= mine


def test_every_query_reads_exported_metrics_or_recorded_rules() -> None:
    exported, known, rules = service_series(), known_series(), recorded()
    for title, expr in queries():
        metrics = referenced_metrics(expr)
        assert metrics or referenced_recordings(expr), (title, expr)
        assert metrics <= known.keys(), (title, metrics - known.keys())
        assert referenced_recordings(expr) <= rules, (title, expr)
    # Only the job-queue panel may lean on the pending list; every other panel is fully live.
    for title, expr in queries():
        if title != "Job queue":
            assert referenced_metrics(expr) <= exported.keys(), (title, expr)
    for v in dashboard()["templating"]["list"]:
        if v["type"] == "query":
            assert referenced_metrics(v["definition"]) <= exported.keys(), v["name"]


def test_a_renamed_metric_would_be_caught() -> None:
    """Guards the guard: a typo'd metric name is not among the exported ones."""
    assert "elasticsr_request_duration_second_bucket" not in known_series()
    assert "elasticsr_request_duration_seconds_bucket" in service_series()


def test_provisioning_points_grafana_at_the_dashboard_and_prometheus() -> None:
    compose = yaml.safe_load((REPO / "docker" / "compose.yaml").read_text())["services"]
    mounts = dict(m.rsplit(":", 1)[0].split(":", 1)[::-1] for m in compose["grafana"]["volumes"])
    (provider,) = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "elasticsr.yaml").read_text())[
        "providers"
    ]
    folder = (REPO / "docker" / mounts[provider["options"]["path"]]).resolve()
    assert folder == DASHBOARD.parent
    (source,) = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "prometheus.yaml").read_text())[
        "datasources"
    ]
    assert source["type"] == "prometheus" and source["url"] == "http://prometheus:9090"
    assert "prometheus" in compose
    assert (REPO / "docker" / mounts["/etc/grafana/provisioning"]).resolve() == GRAFANA / "provisioning"


# ---- a real Prometheus evaluates every query ----


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as resp:
        return json.loads(resp.read())


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Prometheus scraping the app's /metrics text every second, our rules loaded; yields its URL."""
    binary = tool("prometheus")
    body = metrics_scrape().encode()

    class Exporter(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    exporter = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Exporter)
    threading.Thread(target=exporter.serve_forever, daemon=True).start()
    root = tmp_path_factory.mktemp("prometheus")
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(PROMETHEUS / "rules" / "elasticsr.rules.yml")],
        "scrape_configs": [
            {
                "job_name": "elasticsr-api",
                "static_configs": [{"targets": [f"127.0.0.1:{exporter.server_address[1]}"]}],
            }
        ],
    }
    (root / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = _free_port()
    cmd = [binary, f"--config.file={root / 'prometheus.yml'}", f"--storage.tsdb.path={root / 'data'}"]
    cmd += [f"--web.listen-address=127.0.0.1:{port}"]
    log = open(root / "log", "wb")  # noqa: SIM115 - closed in finally
    process = subprocess.Popen(["nice", "-n", "10", *cmd], stdout=log, stderr=log)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:  # ready, and at least three scrapes in (rate() needs two)
            assert process.poll() is None, (root / "log").read_text()[-2000:]
            assert time.monotonic() < deadline, (root / "log").read_text()[-2000:]
            try:
                up = _get(f"{base}/api/v1/query?query=count_over_time(up[1m])")["data"]["result"]
                if up and float(up[0]["value"][1]) >= 3:
                    break
            except OSError:
                pass
            time.sleep(0.5)
        yield base
    finally:
        process.terminate()
        process.wait(timeout=30)
        log.close()
        exporter.shutdown()


def _as_grafana_sends(expr: str) -> str:
    """Fill in the dashboard variables the way Grafana does before sending the query."""
    for name, value in {
        "$__rate_interval": "1m",
        "$__range": "5m",
        "$instance": ".*",
        "$method": ".*",
    }.items():
        expr = expr.replace(name, value)
    assert "$" not in expr, expr
    return expr


def test_prometheus_evaluates_every_dashboard_query(prometheus: str) -> None:
    empty = []
    for title, expr in queries():
        query = urllib.parse.quote(_as_grafana_sends(expr))
        answer = _get(f"{prometheus}/api/v1/query?query={query}")
        assert answer["status"] == "success", (title, expr, answer)
        if not answer["data"]["result"]:
            empty.append((title, expr))
    # Series the service exports must come back; only the pending queue metrics may be absent.
    exported = service_series()
    for title, expr in empty:
        live = referenced_metrics(expr) <= exported.keys() and not referenced_recordings(expr)
        assert not live, f"{title}: no data for {expr}"


def test_prometheus_loaded_every_rule_without_errors(prometheus: str) -> None:
    groups = _get(f"{prometheus}/api/v1/rules")["data"]["groups"]
    loaded = [rule for group in groups for rule in group["rules"]]
    assert {r["name"] for r in loaded if r["type"] == "recording"} == recorded()
    time.sleep(1.5)  # one evaluation round at 1 s
    for rule in _get(f"{prometheus}/api/v1/rules")["data"]["groups"]:
        for r in rule["rules"]:
            assert r.get("health") in ("ok", "unknown"), (r["name"], r.get("lastError"))


def test_dashboard_json_is_loadable_as_a_configmap_sized_file() -> None:
    # Kubernetes caps a ConfigMap at 1 MiB; the dashboard ships as one (deploy/grafana).
    assert Path(DASHBOARD).stat().st_size < 900_000
