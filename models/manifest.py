"""What a checkpoint's manifest says about each tier, and predictions read from it.

Schema (one JSON per method, next to its weights):

    {"method": str, "file": str, "sha256": str, "dtype": "float16", "config": {...},
     "training": {"data": [...], "steps": int, "hardware": str, "minutes": float, ...},
     "bicubic_psnr_y": {dataset: {scale: dB}},
     "tiers": [{"name": str, "index": int, "knob": str, "params": int,
                "macs_per_output_pixel": {scale: float},
                "cpu_latency_ms": {scale: float},          # 128×128 LR input
                "psnr_y": {dataset: {scale: dB}}}, ...]}

Scales are JSON keys such as "2", "3", "4". The service predicts a request's quality from the
measured PSNR gain over bicubic averaged over the benchmark sets (added to Set5's bicubic PSNR
for a PSNR), interpolated in log-scale between measured scales and held constant beyond them.
"""

from __future__ import annotations

import itertools
import math
from typing import Any

ANCHOR_SET = "set5"  # evaluated whole for every method: its bicubic PSNR is common to all manifests


def tier_entry(manifest: dict[str, Any], tier: str) -> dict[str, Any]:
    for entry in manifest["tiers"]:
        if entry["name"] == tier:
            return entry
    raise KeyError(f"{manifest['method']} manifest has no tier {tier!r}")


def _interpolate(points: dict[float, float], scale: float) -> float:
    xs = sorted(points)
    if scale <= xs[0]:
        return points[xs[0]]
    if scale >= xs[-1]:
        return points[xs[-1]]
    for lo, hi in itertools.pairwise(xs):
        if lo <= scale <= hi:
            t = (math.log(scale) - math.log(lo)) / (math.log(hi) - math.log(lo))
            return points[lo] + t * (points[hi] - points[lo])
    raise AssertionError("unreachable")


def mean_gain_by_scale(manifest: dict[str, Any], tier: str) -> dict[float, float]:
    """Measured PSNR gain over bicubic (dB), averaged over datasets, per measured scale."""
    entry = tier_entry(manifest, tier)
    bicubic = manifest.get("bicubic_psnr_y", {})
    gains: dict[float, list[float]] = {}
    for dataset, by_scale in entry.get("psnr_y", {}).items():
        for scale, psnr in by_scale.items():
            base = bicubic.get(dataset, {}).get(scale)
            if base is not None:
                gains.setdefault(float(scale), []).append(psnr - base)
    return {s: sum(v) / len(v) for s, v in gains.items()}


def predicted_gain_db(manifest: dict[str, Any], tier: str, scale: float) -> float:
    """Expected PSNR gain over bicubic (dB) of `tier` at `scale`; 0 when nothing was measured."""
    gains = mean_gain_by_scale(manifest, tier)
    return _interpolate(gains, scale) if gains else 0.0


def predicted_psnr_db(manifest: dict[str, Any], tier: str, scale: float) -> float:
    """Expected PSNR-Y (dB) of `tier` at `scale` on a Set5-like image; 0 when nothing was measured.

    Set5's bicubic PSNR plus the tier's gain over bicubic averaged over every set measured.
    Gains are averaged, not PSNRs, because Set14 and B100 may be measured on a method's own
    first few images, whose difficulty (their bicubic PSNR) differs from method to method; Set5
    is evaluated whole for every method, so anchoring on it keeps methods comparable.
    """
    gains = mean_gain_by_scale(manifest, tier)
    bicubic = {name.lower(): by_scale for name, by_scale in manifest.get("bicubic_psnr_y", {}).items()}
    anchor = bicubic.get(ANCHOR_SET, {})
    points = {s: anchor[f"{s:g}"] + g for s, g in gains.items() if f"{s:g}" in anchor}
    if points:
        return _interpolate(points, scale)
    per_scale: dict[float, list[float]] = {}  # no Set5 bicubic: the sets' mean PSNR
    for by_scale in tier_entry(manifest, tier).get("psnr_y", {}).values():
        for s, psnr in by_scale.items():
            per_scale.setdefault(float(s), []).append(psnr)
    if not per_scale:
        return 0.0
    return _interpolate({s: sum(v) / len(v) for s, v in per_scale.items()}, scale)
