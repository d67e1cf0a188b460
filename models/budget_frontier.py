"""`python -m models.budget_frontier`: MoEISR's quality and latency at any expert budget, one run.

    python -m models.budget_frontier --budgets 0,0.1,0.15,0.2,0.25,1 \\
        --data ../shared/datasets/bench/set5 --scales 2,4 --json runs/frontier.json

The shipped tiers are five points of a continuous knob. Choosing them (or judging whether any
budget can be both within 0.3 dB of the full model and at most half its latency) needs the
whole curve: PSNR-Y per budget by the `models.evaluate` protocol, and latency per budget on the
bench's 128² synthetic photograph, the budgets interleaved round-robin so that machine noise
hits all alike, each reported as a ratio to the largest budget timed in the same run.
"""

from __future__ import annotations

import argparse
import statistics
from typing import Any

import torch

from models.allocator import retain_freed_memory
from models.bench import timed
from models.evaluate import evaluate, load_for_eval, write_records
from models.images import synthetic_photo
from models.tiers import Tier


def budget_tiers(model, budgets: list[float]) -> list[Tier]:
    """One ad hoc tier per distinct budget, cheapest first, named like the shipped ones (b25 = 0.25)."""
    ordered = sorted(set(budgets))
    return [
        Tier(f"b{b * 100:g}" if b < 1 else "full", i, b, f"budget={b:g}", model.params_used(b))
        for i, b in enumerate(ordered)
    ]


def latency(
    model, tiers: list[Tier], scales: list[float], repeats: int, side: int
) -> dict[tuple[str, float], float]:
    """Median seconds per (tier, scale) on the synthetic photograph, tiers interleaved."""
    lr = synthetic_photo(side, side)
    times: dict[tuple[str, float], list[float]] = {}
    for scale in scales:
        out = (round(side * scale),) * 2
        model.upscale(lr, out, tiers[-1])  # warm-up
        for _ in range(repeats):
            for tier in tiers:
                seconds, _ = timed(lambda tier=tier, out=out: model.upscale(lr, out, tier))
                times.setdefault((tier.name, scale), []).append(seconds)
    return {key: statistics.median(values) for key, values in times.items()}


def frontier(
    model,
    budgets: list[float],
    folders: list[str],
    scales: list[float],
    limit: int | None = None,
    repeats: int = 3,
    side: int = 128,
) -> list[dict[str, Any]]:
    tiers = budget_tiers(model, budgets)
    records = evaluate(model, folders, scales, tiers, limit, torch.device("cpu"))
    seconds = latency(model, tiers, scales, repeats, side)
    richest, budget = tiers[-1].name, {t.name: t.knob for t in tiers}
    best = {(r["dataset"], r["scale"]): r["psnr_y"] for r in records if r["tier"] == richest}
    for r in records:
        key = (r["tier"], r["scale"])
        r["budget"] = budget[r["tier"]]
        r["db_below_richest"] = round(best[(r["dataset"], r["scale"])] - r["psnr_y"], 4)
        r["latency_ms"] = round(seconds[key] * 1e3, 1)
        r["latency_vs_richest"] = round(seconds[key] / seconds[(richest, r["scale"])], 3)
    return records


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budgets", default="0,0.1,0.15,0.2,0.25,0.45,0.7,1", help="comma-separated, in [0, 1]")
    ap.add_argument("--data", nargs="+", required=True, help="folders of HR images")
    ap.add_argument("--scales", default="2,4")
    ap.add_argument("--limit", type=int, default=None, help="first N images of each folder")
    ap.add_argument("--repeats", type=int, default=3, help="latency rounds (median)")
    ap.add_argument("--size", type=int, default=128, help="side of the synthetic LR input timed")
    ap.add_argument(
        "--weights", default=None, help="a training run's model.safetensors instead of the shipped one"
    )
    ap.add_argument("--checkpoint-dir", default=None)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    budgets = [float(b) for b in args.budgets.split(",")]
    if not budgets or any(not 0.0 <= b <= 1.0 for b in budgets):
        ap.error("budgets must lie in [0, 1]")
    retain_freed_memory()
    if args.threads:
        torch.set_num_threads(args.threads)
    model = load_for_eval("moeisr", args.weights, torch.device("cpu"), args.checkpoint_dir)
    scales = [float(s) for s in args.scales.split(",")]
    with torch.no_grad():  # not set_grad_enabled: main also runs inside other processes (tests)
        records = frontier(model, budgets, args.data, scales, args.limit, args.repeats, args.size)
    header = ("budget", "set", "scale", "PSNR-Y", "dB below", "ms", "latency")
    print("\n{:>7s} {:8s} {:>5s} {:>7s} {:>8s} {:>8s} {:>7s}".format(*header))
    for r in records:
        print(
            f"{r['budget']:7g} {r['dataset']:8s} x{r['scale']:<4g} {r['psnr_y']:7.3f} "
            f"{r['db_below_richest']:8.3f} {r['latency_ms']:8.1f} {r['latency_vs_richest']:7.3f}"
        )
    if args.json:
        write_records(args.json, records)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
