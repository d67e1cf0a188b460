"""`python -m models.compare_benches`: a change's decoder and latency times against its base's,
from `models.bench` runs made in separate processes, alternating (`scripts/ab_bench.sh`).

Timing both sides in one process, switching the old code back in round by round, misled once.
The loops of session 30 made the torch ops of the same process run up to twice as slowly, so
the change read 0.72–0.84 of the old code's time in process and 0.96–1.17 across processes
(models/README). Runs are paired in order (base round i with change round i), and each row
prints the range of the paired ratios: change / base, below 1 is faster.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from statistics import median

Row = tuple[str, str, float]  # method, tier, scale


def times(bench: dict, key: str) -> dict[Row, float]:
    """Seconds per (method, tier, scale) of one bench run; key: "decode_ms" or "latency_ms"."""
    return {(r["method"], r["tier"], r["scale"]): r[key] / 1e3 for r in bench["rows"]}


def paired_ratios(base: list[dict], change: list[dict], key: str) -> dict[Row, list[float]]:
    """Per row (in the base's order), change / base of each pair of runs where both timed it."""
    if len(base) != len(change):
        raise ValueError(f"{len(base)} base runs against {len(change)} of the change: pair them")
    ratios: dict[Row, list[float]] = {}
    for b, c in zip(base, change, strict=True):
        tb, tc = times(b, key), times(c, key)
        for row in tb:  # in the bench's order
            if row in tc:
                ratios.setdefault(row, []).append(tc[row] / tb[row])
    return ratios


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", nargs="+", required=True, help="bench JSONs of the base, in order")
    ap.add_argument("--change", nargs="+", required=True, help="bench JSONs of the change, in order")
    args = ap.parse_args(argv)
    base = [json.loads(Path(p).read_text()) for p in args.base]
    change = [json.loads(Path(p).read_text()) for p in args.change]
    decode, latency = paired_ratios(base, change, "decode_ms"), paired_ratios(base, change, "latency_ms")
    peaks = " ".join(
        f"{b['matmul_peak_gflops']:.0f}/{c['matmul_peak_gflops']:.0f}"
        for b, c in zip(base, change, strict=True)
    )
    print(f"matmul peak, base/change per round: {peaks}")
    print(f"{'method':8s} {'tier':8s} {'scale':>5s}  decoder change/base  latency change/base")
    for row, r in decode.items():
        lat = latency[row]
        print(
            f"{row[0]:8s} {row[1]:8s} {row[2]:5g}  {min(r):.2f}–{max(r):.2f} (median {median(r):.2f})"
            f"  {min(lat):.2f}–{max(lat):.2f}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
