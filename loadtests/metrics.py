"""From per-request records to the numbers the report shows, and the issue's targets checked on them.

Definitions (also stated in loadtests/README.md):
* SLO attainment = ok responses whose latency (from the scheduled send) ≤ SLO / all arrivals of the
  level. A shed (503), a rejection (4xx), a timeout, an error or a client-side drop is a miss.
* Latency percentiles are over ok responses (a 503 answered in 2 ms is not a fast success).
* Throughput = ok responses / level length; goodput counts only those within the SLO.
* Quality: mean predicted PSNR-Y (the service's header) over ok responses; measured PSNR-Y
  against the HR originals over the scored sample, with the same sample's prediction and bicubic.
  Absolute PSNR depends on which images and scales were served, so gains over bicubic are also
  given, and *effective gain* = predicted gain of ok-within-SLO answers, 0 dB (bicubic) for every
  miss, averaged over all arrivals.
* Paired quality: policies get the same arrivals, so quality is also compared arrival by arrival
  (mean predicted-PSNR difference over the arrivals both answered ok); the targets use this.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np

from loadtests.generator import Record
from loadtests.workload import Level

STATUSES = ("ok", "shed", "rejected", "timeout", "error", "dropped")


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (linear interpolation between order statistics); None for no values."""
    return float(np.percentile(np.asarray(values, dtype=float), q)) if len(values) else None


def _mean(values: Sequence[float]) -> float | None:
    return float(np.mean(values)) if len(values) else None


def summarize_level(records: Sequence[Record], level: Level, slo_s: float) -> dict[str, Any]:
    """Every number of one load level, from that level's records (by scheduled send time)."""
    counts = Counter(r.status for r in records)
    ok = [r for r in records if r.status == "ok"]
    latencies = [r.latency for r in ok if r.latency is not None]
    within = [x for x in latencies if x <= slo_s]
    offered = len(records)
    served_as = Counter(f"{r.method}/{r.tier}" for r in ok)
    scored = [r for r in ok if r.measured_psnr is not None]
    on_time = [r for r in ok if r.latency is not None and r.latency <= slo_s]
    return {
        "multiplier": level.multiplier,
        "target_rate": level.rate,
        "seconds": level.seconds,
        "offered": offered,
        "offered_rate": offered / level.seconds if level.seconds else 0.0,
        "counts": {s: counts.get(s, 0) for s in STATUSES},
        "slo_attainment": len(within) / offered if offered else None,
        "shed_rate": counts.get("shed", 0) / offered if offered else None,
        "latency_p50_ms": _ms(percentile(latencies, 50)),
        "latency_p95_ms": _ms(percentile(latencies, 95)),
        "latency_p99_ms": _ms(percentile(latencies, 99)),
        "latency_max_ms": _ms(max(latencies) if latencies else None),
        "throughput_rps": len(ok) / level.seconds if level.seconds else 0.0,
        "goodput_rps": len(within) / level.seconds if level.seconds else 0.0,
        "predicted_psnr_db": _mean([r.predicted_psnr for r in ok if r.predicted_psnr is not None]),
        "predicted_gain_db": _mean([r.predicted_gain for r in ok if r.predicted_gain is not None]),
        "effective_gain_db": sum(r.predicted_gain or 0.0 for r in on_time) / offered if offered else None,
        "served_as": dict(served_as.most_common()),
        "measured": {
            "n": len(scored),
            "psnr_db": _mean([r.measured_psnr for r in scored]),
            "gain_db": _mean(
                [
                    r.measured_psnr - r.bicubic_psnr
                    for r in scored
                    if r.measured_psnr is not None and r.bicubic_psnr is not None
                ]
            ),
            "predicted_psnr_db": _mean([r.predicted_psnr for r in scored if r.predicted_psnr is not None]),
            "bicubic_psnr_db": _mean([r.bicubic_psnr for r in scored if r.bicubic_psnr is not None]),
        },
        "max_send_lag_ms": _ms(max((r.send_lag for r in records), default=None)),
    }


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1000.0


def summarize(records: Sequence[Record], levels: Sequence[Level], slo_s: float) -> list[dict[str, Any]]:
    """One summary per level, in profile order."""
    return [
        summarize_level([r for r in records if r.level == i], level, slo_s) for i, level in enumerate(levels)
    ]


def paired_delta(a: Sequence[Record], b: Sequence[Record], level: int) -> dict[str, Any]:
    """Mean predicted-PSNR difference a − b over the arrivals of `level` both runs answered ok."""
    b_ok = {r.index: r for r in b if r.level == level and r.status == "ok" and r.predicted_psnr is not None}
    pairs = [
        (r.predicted_psnr, b_ok[r.index].predicted_psnr)
        for r in a
        if r.level == level and r.status == "ok" and r.predicted_psnr is not None and r.index in b_ok
    ]
    return {"n": len(pairs), "delta_db": _mean([x - y for x, y in pairs])}


def _at(levels: list[dict[str, Any]], multiplier: float) -> list[int]:
    return [i for i, lv in enumerate(levels) if abs(lv["multiplier"] - multiplier) < 1e-9]


def check_targets(
    by_policy: dict[str, list[dict[str, Any]]],
    paired: dict[str, list[dict[str, Any]]],
    adaptive: str = "adaptive",
    richest: str = "static-richest",
    cheapest: str = "static-cheapest",
    high: float = 3.0,
    low: float = 0.5,
) -> list[dict[str, Any]]:
    """The issue's three targets, each at every level it names; `met` None = not measured.

    `paired[other]` holds, per level, `paired_delta(adaptive, other)`; quality targets use it.
    """
    a, r, c = by_policy.get(adaptive), by_policy.get(richest), by_policy.get(cheapest)
    checks: list[dict[str, Any]] = []
    if a is None or r is None or c is None:
        return checks
    for i in _at(a, high):
        aa, ra = a[i]["slo_attainment"], r[i]["slo_attainment"]
        checks.append(
            {
                "target": f"at {high:g}x: adaptive SLO attainment >= 99% and static-richest < 50%",
                "level": i,
                "adaptive_attainment": aa,
                "richest_attainment": ra,
                "met": None if aa is None or ra is None else bool(aa >= 0.99 and ra < 0.5),
            }
        )
    for i in _at(a, low):
        delta = paired[richest][i]
        checks.append(
            {
                "target": f"at {low:g}x: adaptive quality within 0.1 dB of static-richest (paired)",
                "level": i,
                "paired_delta_db": delta["delta_db"],
                "pairs": delta["n"],
                "adaptive_db": a[i]["predicted_psnr_db"],
                "richest_db": r[i]["predicted_psnr_db"],
                "adaptive_measured_db": a[i]["measured"]["psnr_db"],
                "richest_measured_db": r[i]["measured"]["psnr_db"],
                "met": None if delta["delta_db"] is None else bool(delta["delta_db"] >= -0.1),
            }
        )
    for i, level in enumerate(a):
        delta, aa = paired[cheapest][i], level["slo_attainment"]
        checks.append(
            {
                "target": "every level: adaptive quality > static-cheapest (paired), with >= 99% attainment",
                "level": i,
                "multiplier": level["multiplier"],
                "paired_delta_db": delta["delta_db"],
                "pairs": delta["n"],
                "adaptive_db": level["predicted_psnr_db"],
                "cheapest_db": c[i]["predicted_psnr_db"],
                "adaptive_attainment": aa,
                "met": None
                if delta["delta_db"] is None or aa is None
                else bool(delta["delta_db"] > 0 and aa >= 0.99),
            }
        )
    return checks
