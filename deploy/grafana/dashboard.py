"""Generate the Grafana dashboard: `python deploy/grafana/dashboard.py` writes dashboards/elasticsr.json.

The JSON is committed (Grafana provisions it as is); tests/test_deploy_grafana.py checks that it is
what this script produces, so edit here, not there. Plain dicts rather than a dashboard library:
nothing to install, and the JSON stays readable in review.

Every panel and query uses the `${datasource}` variable, never a fixed data-source uid: the same
file then works under file provisioning and under the UI's import (where `__inputs` would fail).
"""

from __future__ import annotations

import json
from pathlib import Path

OUT = Path(__file__).parent / "dashboards" / "elasticsr.json"
DS = {"type": "prometheus", "uid": "${datasource}"}
RATE = "$__rate_interval"
INST = 'instance=~"$instance"'
SEL = f'{INST},method=~"$method"'  # for metrics labelled by method and tier
OK = f'{SEL},outcome="ok"'  # latency of answered requests (shed ones are fast and would flatter it)


def rate(metric: str, sel: str, window: str = RATE) -> str:
    braces = f"{{{sel}}}" if sel else ""
    return f"rate({metric}{braces}[{window}])"


def hq(q: float, metric: str, by: str, sel: str, window: str = RATE) -> str:
    """PromQL for quantile `q` of histogram `metric`, grouped by `by` (plus le)."""
    group = f"le, {by}" if by else "le"
    return f"histogram_quantile({q}, sum by ({group}) ({rate(metric + '_bucket', sel, window)}))"


def mean(metric: str, by: str, sel: str, window: str = RATE) -> str:
    """PromQL for the mean of histogram `metric` (sum rate / count rate), grouped by `by`."""
    agg = f"sum by ({by}) " if by else "sum"
    return f"{agg}({rate(metric + '_sum', sel, window)}) / {agg}({rate(metric + '_count', sel, window)})"


def target(expr: str, legend: str = "", ref: str = "A", **extra) -> dict:
    return {"datasource": DS, "expr": expr, "legendFormat": legend, "refId": ref, **extra}


def panel(kind: str, title: str, desc: str, targets: list[dict], *, unit: str = "short", **extra) -> dict:
    fieldconfig = {"defaults": {"unit": unit}, "overrides": []}
    return {
        "type": kind,
        "title": title,
        "description": desc,
        "datasource": DS,
        "targets": targets,
        "fieldConfig": fieldconfig,
        "options": {},
        **extra,
    }


def timeseries(title: str, desc: str, targets: list[dict], *, unit: str = "short", stack: str = "none"):
    p = panel("timeseries", title, desc, targets, unit=unit)
    p["fieldConfig"]["defaults"]["custom"] = {
        "stacking": {"mode": stack, "group": "A"},
        "fillOpacity": 60 if stack != "none" else 10,
    }
    p["options"] = {"legend": {"displayMode": "list", "placement": "bottom"}, "tooltip": {"mode": "multi"}}
    return p


def stat(title: str, desc: str, expr: str, *, unit: str) -> dict:
    p = panel("stat", title, desc, [target(expr)], unit=unit)
    p["options"] = {"reduceOptions": {"calcs": ["lastNotNull"]}, "colorMode": "value", "graphMode": "area"}
    return p


def quantiles(metric: str, by: str, sel: str) -> list[dict]:
    """p50/p95/p99 of a histogram, one series per `by` group."""
    labels = "/".join("{{" + label + "}}" for label in by.split(", "))
    return [
        target(hq(q, metric, by, sel), f"p{round(q * 100)} {labels}", ref=ref)
        for q, ref in ((0.5, "A"), (0.95, "B"), (0.99, "C"))
    ]


def overview_row() -> list[dict]:
    return [
        stat(
            "Request rate",
            "Upscale requests per second, all outcomes.",
            f"sum(rate(elasticsr_requests_total{{{INST}}}[{RATE}]))",
            unit="reqps",
        ),
        stat(
            "p99 latency (ok)",
            "99th percentile of successful requests, arrival to response.",
            hq(0.99, "elasticsr_request_duration_seconds", "", f'{INST},outcome="ok"'),
            unit="s",
        ),
        stat(
            "Shed",
            "Share of requests refused with 503 (overloaded).",
            f"sum(rate(elasticsr_shed_requests_total{{{INST}}}[{RATE}])) / "
            f"clamp_min(sum(rate(elasticsr_requests_total{{{INST}}}[{RATE}])), 1e-9)",
            unit="percentunit",
        ),
        stat(
            "SLO errors (1h)",
            "Shed or failed share over the last hour (SLO: < 1%; recording rule).",
            "elasticsr:slo_errors:ratio_rate1h",
            unit="percentunit",
        ),
        stat(
            "Mean predicted PSNR",
            "Mean predicted PSNR-Y of what was served.",
            mean("elasticsr_predicted_psnr_db", "", SEL),
            unit="dB",
        ),
        stat(
            "In flight",
            "Upscale requests being handled now, all instances (the API's autoscaling metric).",
            f"sum(elasticsr_inflight_requests{{{INST}}})",
            unit="short",
        ),
    ]


def latency_panels() -> list[dict]:
    return [
        timeseries(
            "Latency percentiles by tier",
            "Successful requests, arrival to response, per method and tier.",
            quantiles("elasticsr_request_duration_seconds", "method, tier", OK),
            unit="s",
        ),
        timeseries(
            "Queue wait and compute (p95)",
            "Where the time goes: waiting for an inference worker vs running the model.",
            [
                target(hq(0.95, "elasticsr_queue_wait_seconds", "", INST), "queue wait p95"),
                target(
                    hq(0.95, "elasticsr_compute_seconds", "method, tier", SEL),
                    "compute p95 {{method}}/{{tier}}",
                    ref="B",
                ),
            ],
            unit="s",
        ),
    ]


def quality_panels() -> list[dict]:
    # Latency vs quality, one point per (method, tier): two instant queries joined on their labels.
    scatter = panel(
        "xychart",
        "Latency vs predicted quality by tier",
        "Each point is a method/tier over the dashboard's range: p95 latency (x) against mean "
        "predicted PSNR (y). Up and to the left is better; the controller moves traffic along this curve.",
        [
            target(
                hq(0.95, "elasticsr_request_duration_seconds", "method, tier", OK, "$__range"),
                format="table",
                instant=True,
            ),
            target(
                mean("elasticsr_predicted_psnr_db", "method, tier", SEL, "$__range"),
                ref="B",
                format="table",
                instant=True,
            ),
        ],
        unit="short",
        pluginVersion="11.3.0",
        transformations=[
            {"id": "merge", "options": {}},
            {
                "id": "organize",
                "options": {
                    "excludeByName": {"Time": True},
                    "renameByName": {"Value #A": "p95 latency (s)", "Value #B": "predicted PSNR (dB)"},
                },
            },
        ],
    )
    scatter["options"] = {
        "mapping": "manual",
        "series": [
            {
                "frame": {"matcher": {"id": "byIndex", "options": 0}},
                "x": {"matcher": {"id": "byName", "options": "p95 latency (s)"}},
                "y": {"matcher": {"id": "byName", "options": "predicted PSNR (dB)"}},
            }
        ],
        "legend": {"showLegend": False},
        "tooltip": {"mode": "single"},
    }
    scatter["fieldConfig"]["defaults"]["custom"] = {"show": "points", "pointSize": {"fixed": 8}}
    heatmap = panel(
        "heatmap",
        "Predicted PSNR distribution",
        "How many requests were served at each predicted PSNR over time (darker = more).",
        [
            target(
                f"sum by (le) (increase(elasticsr_predicted_psnr_db_bucket{{{SEL}}}[{RATE}]))",
                "{{le}}",
                format="heatmap",
            )
        ],
        unit="short",
    )
    heatmap["options"] = {
        "calculate": False,
        "yAxis": {"unit": "dB"},
        "cellGap": 1,
        "color": {"mode": "scheme", "scheme": "Oranges"},
    }
    return [
        timeseries(
            "Tier mix",
            "Share of requests the controller sent to each method and tier.",
            [
                target(
                    f"sum by (method, tier) (rate(elasticsr_tier_choices_total{{{SEL}}}[{RATE}]))",
                    "{{method}}/{{tier}}",
                )
            ],
            unit="reqps",
            stack="percent",
        ),
        timeseries(
            "Predicted quality over time",
            "Mean predicted PSNR-Y of served images, per method.",
            [target(mean("elasticsr_predicted_psnr_db", "method", SEL), "{{method}}")],
            unit="dB",
        ),
        scatter,
        heatmap,
    ]


def load_panels() -> list[dict]:
    return [
        timeseries(
            "CPU and GPU utilisation",
            "The load signals the controller reads.",
            [
                target(f"elasticsr_load_cpu_utilization_ratio{{{INST}}}", "CPU {{instance}}"),
                target(f"elasticsr_load_gpu_utilization_ratio{{{INST}}}", "GPU {{instance}}", ref="B"),
            ],
            unit="percentunit",
        ),
        timeseries(
            "Memory",
            "Process resident memory and GPU memory in use.",
            [
                target(f"elasticsr_load_memory_bytes{{{INST}}}", "RSS {{instance}}"),
                target(f"elasticsr_load_gpu_memory_bytes{{{INST}}}", "GPU {{instance}}", ref="B"),
            ],
            unit="bytes",
        ),
        timeseries(
            "In flight and output size",
            "Requests being handled per instance; p95 output size of answered requests.",
            [
                target(f"elasticsr_inflight_requests{{{INST}}}", "in flight {{instance}}"),
                target(hq(0.95, "elasticsr_output_megapixels", "", INST), "output p95 (MP)", ref="B"),
            ],
            unit="short",
        ),
        timeseries(
            "Latency model",
            "Seconds of compute per GMAC the controller currently assumes, per tier.",
            [target(f"elasticsr_tier_latency_seconds_per_gmac{{{SEL}}}", "{{method}}/{{tier}}")],
            unit="s",
        ),
    ]


def queue_panels() -> list[dict]:
    return [
        timeseries(
            "Queue depth",
            "Work waiting for a worker (elasticsr_queue_depth), as each instance reports it; "
            "the job-queue workers' autoscaling metric (KEDA reads its max).",
            [target(f"elasticsr_queue_depth{{{INST}}}", "{{instance}}")],
            unit="short",
        ),
        timeseries(
            "Job queue",
            "Jobs finished per second by outcome, how long jobs waited for a worker (p95), and how "
            "many workers were busy on average.",
            [
                target(f"sum by (outcome) ({rate('elasticsr_jobs_total', '')})", "{{outcome}} /s"),
                target(hq(0.95, "elasticsr_job_age_seconds", "", ""), "job wait p95 (s)", ref="B"),
                target(f"sum({rate('elasticsr_worker_busy_seconds_total', '')})", "busy workers", ref="C"),
            ],
            unit="short",
        ),
        timeseries(
            "Shed requests by reason",
            "503 answers per second, by why the request was refused.",
            [target(f"sum by (reason) ({rate('elasticsr_shed_requests_total', INST)})", "{{reason}}")],
            unit="reqps",
            stack="normal",
        ),
        timeseries(
            "Requests by outcome",
            "Upscale answers per second, by outcome and error code.",
            [
                target(
                    f"sum by (outcome, code) (rate(elasticsr_requests_total{{{INST}}}[{RATE}]))",
                    "{{outcome}} {{code}}",
                )
            ],
            unit="reqps",
            stack="normal",
        ),
    ]


def row(title: str, y: int) -> dict:
    grid = {"h": 1, "w": 24, "x": 0, "y": y}
    return {"type": "row", "title": title, "collapsed": False, "panels": [], "gridPos": grid}


def layout() -> list[dict]:
    """Rows of panels on Grafana's 24-column grid; ids and positions are assigned here."""
    sections = [
        ("Overview", overview_row(), 4),
        ("Latency", latency_panels(), 8),
        ("Quality", quality_panels(), 8),
        ("Load", load_panels(), 8),
        ("Queue and shedding", queue_panels(), 8),
    ]
    panels, y = [], 0
    for title, items, height in sections:
        panels.append(row(title, y))
        y += 1
        per_line = 6 if height == 4 else 2
        width = 24 // per_line
        for i, p in enumerate(items):
            line, column = divmod(i, per_line)
            p["gridPos"] = {"h": height, "w": width, "x": column * width, "y": y + line * height}
        panels += items
        y += ((len(items) + per_line - 1) // per_line) * height
    for pid, p in enumerate(panels, start=1):
        p["id"] = pid
    return panels


def variable(name: str, label: str, query: str) -> dict:
    return {
        "name": name,
        "label": label,
        "type": "query",
        "datasource": DS,
        "query": {"query": query, "refId": name},
        "definition": query,
        "refresh": 2,
        "includeAll": True,
        "multi": True,
        "allValue": ".*",
        "current": {},
        "sort": 1,
    }


def dashboard() -> dict:
    return {
        "id": None,  # provisioning assigns it; uid below is the stable identity
        "uid": "elasticsr-overview",
        "title": "ElasticSR: latency vs quality",
        "description": "Adaptive super-resolution serving: what the controller chose, what it cost, and why.",
        "tags": ["elasticsr"],
        "timezone": "browser",
        "schemaVersion": 39,
        "version": 1,
        "editable": True,
        "graphTooltip": 1,
        "refresh": "10s",
        "time": {"from": "now-1h", "to": "now"},
        "templating": {
            "list": [
                {
                    "name": "datasource",
                    "label": "Data source",
                    "type": "datasource",
                    "query": "prometheus",
                    "current": {},
                    "hide": 0,
                    "refresh": 1,
                    "regex": "",
                    "options": [],
                },
                variable("instance", "Instance", "label_values(elasticsr_inflight_requests, instance)"),
                variable("method", "Method", "label_values(elasticsr_tier_choices_total, method)"),
            ]
        },
        "annotations": {"list": []},
        "panels": layout(),
    }


def render() -> str:
    return json.dumps(dashboard(), indent=2) + "\n"


if __name__ == "__main__":
    OUT.write_text(render())
    print(f"wrote {OUT}")
