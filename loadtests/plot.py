"""The comparison as one PNG: attainment, tail latency, quality and throughput per load level.

matplotlib is an optional dependency (`pip install -e '.[loadtest]'`); without it the run still
writes its JSON and table, and says that the plot was skipped.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

STYLE = {"adaptive": "C0", "static-richest": "C3", "static-cheapest": "C2"}


def plot(result: dict[str, Any], path: Path) -> bool:
    """Write the figure; False when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    slo_ms = result["config"]["slo_ms"]
    fig, axes = plt.subplots(2, 2, figsize=(11, 7.5), sharex=True)
    (att, lat), (qual, thr) = axes
    labels: list[str] = []
    for name, run in result["policies"].items():
        levels = run["levels"]
        xs = list(range(len(levels)))
        labels = [f"{lv['multiplier']:g}×" for lv in levels]
        color = STYLE.get(name)
        att.plot(xs, [_pct(lv["slo_attainment"]) for lv in levels], "o-", color=color, label=name)
        lat.plot(xs, [_v(lv["latency_p99_ms"]) for lv in levels], "o-", color=color, label=f"{name} p99")
        lat.plot(xs, [_v(lv["latency_p50_ms"]) for lv in levels], ":", color=color, label=f"{name} p50")
        # Gains over bicubic, not absolute PSNR: absolute values move with the images and scales
        # a policy happened to serve, gains much less.
        qual.plot(xs, [_v(lv["predicted_gain_db"]) for lv in levels], "o-", color=color)
        qual.plot(xs, [_v(lv["measured"]["gain_db"]) for lv in levels], "x--", color=color)
        thr.plot(xs, [lv["goodput_rps"] for lv in levels], "o-", color=color, label=f"{name} within SLO")
        thr.plot(xs, [lv["offered_rate"] for lv in levels], ":", color="grey")
    att.axhline(99, color="k", lw=0.8, ls="--")
    att.set(ylabel="SLO attainment (%)", ylim=(-2, 102), title="Requests within the SLO")
    lat.axhline(slo_ms, color="k", lw=0.8, ls="--", label="SLO")
    lat.set(ylabel="latency of ok responses (ms)", title="p50 (dotted) and p99 latency")
    qual.set(
        ylabel="PSNR-Y gain over bicubic (dB)",
        title="Delivered quality (o predicted, x measured on a sample)",
    )
    thr.set(ylabel="requests / s", title="Goodput (grey: offered load)")
    for ax in axes.flat:
        ax.grid(alpha=0.3)
        ax.set_xticks(range(len(labels)), labels)
    for ax in axes[1]:
        ax.set_xlabel(f"load level (× static-richest capacity {result['capacity']['rps']:.2f} req/s)")
    att.legend(fontsize=8)
    fig.suptitle(f"ElasticSR under load — {result['machine']}, {result['date']}, SLO {slo_ms:g} ms")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _pct(value: float | None) -> float:
    return math.nan if value is None else 100.0 * value


def _v(value: float | None) -> float:
    return math.nan if value is None else value
