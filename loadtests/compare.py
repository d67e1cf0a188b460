"""`python -m loadtests.compare`: adaptive vs static-richest vs static-cheapest under an open-loop load step.

1. Start the service with `static:<method>:<richest>` and measure its capacity (closed loop,
   long deadline: the most ok responses per second it completes when always busy).
2. For each policy in turn — static-richest, adaptive, static-cheapest — start a fresh service,
   send a few warm-up requests, then run the same open-loop profile (multipliers × that capacity,
   the same seeded arrival times and request sequence), and stop the service.
3. Score a seeded sample of each level's responses against the HR originals (after the service
   stopped, so scoring does not compete with serving), summarize, check the issue's targets,
   and write `<out-dir>/<date>-<machine>.{json,md,png}`.

Only 127.0.0.1 is ever contacted; the run is bounded by the profile length (arrivals) and the
client timeout (stragglers).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import os
import platform
import random
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from loadtests.generator import HttpSender, Record, run_closed_loop, run_open_loop
from loadtests.metrics import check_targets, paired_delta, percentile, summarize
from loadtests.plot import plot
from loadtests.server import running_service
from loadtests.workload import RequestSpec, build_mix, profile, schedule
from models.checkpoint import CHECKPOINT_DIR, read_manifest
from models.manifest import predicted_psnr_db

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO.parent / "shared" / "datasets" / "bench"
CAPACITY_DEADLINE_MS = 120_000.0  # capacity is measured without shedding


def _floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x.strip()]


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    g = ap.add_argument_group("models and policies")
    g.add_argument("--checkpoint-dir", type=Path, default=CHECKPOINT_DIR)
    g.add_argument(
        "--method", default="auto", help="method of the static baselines; auto = best richest tier"
    )
    g.add_argument(
        "--adaptive-methods", default="", help="comma list served by adaptive; default --method; all"
    )
    g.add_argument(
        "--policies",
        default="static-richest,adaptive,static-cheapest",
        help="which policies to run, in order (e.g. adaptive alone, with --capacity-rps, to try a setting)",
    )
    g.add_argument("--richest-tier", default="", help="default: the method's last manifest tier")
    g.add_argument("--cheapest-tier", default="", help="default: the method's first manifest tier")
    g.add_argument(
        "--service-env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra ELASTICSR_* setting for every service started (repeatable)",
    )
    g = ap.add_argument_group("requests")
    g.add_argument("--bench-dir", type=Path, default=BENCH)
    g.add_argument("--datasets", default="set5,set14,b100")
    g.add_argument("--sides", default="64,96,128", help="HR (= output) crop sides in pixels")
    g.add_argument("--scales", default="2,3,4")
    g.add_argument("--mix-size", type=int, default=24, help="distinct requests in the mix")
    g.add_argument("--slo-ms", type=float, default=2500.0)
    g.add_argument(
        "--deadline-ms",
        type=float,
        default=0.0,
        help="deadline_ms sent with each request; default 0.9 × SLO (the rest covers transport)",
    )
    g.add_argument("--timeout-s", type=float, default=0.0, help="client timeout; default max(10, 3 × SLO)")
    g = ap.add_argument_group("load profile")
    g.add_argument("--multipliers", default="0.5,1,2,3,1", help="load levels, × static-richest capacity")
    g.add_argument("--level-seconds", type=float, default=50.0)
    g.add_argument("--arrivals", choices=["constant", "poisson"], default="constant")
    g.add_argument("--capacity-rps", type=float, default=0.0, help="skip the capacity phase and use this")
    g.add_argument("--capacity-seconds", type=float, default=45.0)
    g.add_argument("--capacity-concurrency", type=int, default=2)
    g.add_argument("--warm-requests", type=int, default=6, help="sequential requests before each profile")
    g.add_argument("--max-inflight", type=int, default=256, help="client safety cap (extra arrivals = drops)")
    g.add_argument("--max-requests", type=int, default=20_000, help="refuse profiles with more arrivals")
    g.add_argument("--psnr-sample", type=int, default=20, help="responses scored per policy and level")
    g.add_argument("--seed", type=int, default=0)
    g = ap.add_argument_group("output")
    g.add_argument("--out-dir", type=Path, default=REPO / "loadtests" / "results")
    g.add_argument("--machine", default=f"{os.cpu_count()}cpu-{platform.machine()}")
    g.add_argument("--no-plot", action="store_true")
    args = ap.parse_args(argv)
    args.deadline_ms = args.deadline_ms or 0.9 * args.slo_ms
    args.timeout_s = args.timeout_s or max(10.0, 3 * args.slo_ms / 1000)
    if not 0 < args.deadline_ms <= args.slo_ms:
        ap.error("--deadline-ms must be positive and at most --slo-ms")
    return args


# --- what to serve --------------------------------------------------------------------------------
def _manifests(checkpoint_dir: Path) -> dict[str, dict[str, Any]]:
    found = {}
    for path in sorted(checkpoint_dir.glob("*.json")):
        manifest = read_manifest(path.stem, checkpoint_dir)
        if manifest.get("tiers"):
            found[path.stem] = manifest
    if not found:
        raise SystemExit(
            f"no checkpoint manifests in {checkpoint_dir}; train/export or pass --checkpoint-dir"
        )
    return found


def _tiers(manifest: dict[str, Any]) -> list[str]:
    return [t["name"] for t in sorted(manifest["tiers"], key=lambda t: t["index"])]


def resolve_policies(args: argparse.Namespace) -> tuple[dict[str, str], list[str], dict[str, Any]]:
    """(policy name -> ELASTICSR_POLICY, adaptive methods, what was chosen and why)."""
    manifests = _manifests(args.checkpoint_dir)
    scales = _floats(args.scales)

    def richest_quality(name: str) -> float:
        top = _tiers(manifests[name])[-1]
        return sum(predicted_psnr_db(manifests[name], top, s) for s in scales) / len(scales)

    method = max(manifests, key=richest_quality) if args.method == "auto" else args.method
    if method not in manifests:
        raise SystemExit(f"no manifest for {method!r} in {args.checkpoint_dir}; have {', '.join(manifests)}")
    tiers = _tiers(manifests[method])
    richest, cheapest = args.richest_tier or tiers[-1], args.cheapest_tier or tiers[0]
    for tier in (richest, cheapest):
        if tier not in tiers:
            raise SystemExit(f"{method} has no tier {tier!r}; tiers: {', '.join(tiers)}")
    if args.adaptive_methods == "all":
        adaptive = list(manifests)
    else:
        adaptive = [m for m in args.adaptive_methods.split(",") if m] or [method]
    known = {
        "static-richest": f"static:{method}:{richest}",
        "adaptive": "adaptive",
        "static-cheapest": f"static:{method}:{cheapest}",
    }
    wanted = [p for p in args.policies.split(",") if p]
    if not wanted or any(p not in known for p in wanted):
        raise SystemExit(f"--policies takes a comma list of {', '.join(known)}; got {args.policies!r}")
    policies = {p: known[p] for p in wanted}
    served = {m: manifests[m] for m in {method, *adaptive} if m in manifests}
    info = {
        "method": method,
        "tiers": tiers,
        "richest": richest,
        "cheapest": cheapest,
        "adaptive_methods": adaptive,
        "checkpoints": {
            m: {"sha256": man.get("sha256"), "training": (man.get("training") or {}).get("hardware")}
            for m, man in served.items()
        },
    }
    return policies, adaptive, info


# --- one policy -----------------------------------------------------------------------------------
async def measure_capacity(url: str, mix: list[RequestSpec], args: argparse.Namespace) -> dict[str, Any]:
    sender = HttpSender(url, CAPACITY_DEADLINE_MS, timeout_s=CAPACITY_DEADLINE_MS / 1000)
    try:
        records, elapsed = await run_closed_loop(
            mix, sender, args.capacity_concurrency, args.capacity_seconds
        )
    finally:
        await sender.aclose()
    ok = [r.latency for r in records if r.status == "ok" and r.latency is not None]
    if not ok:
        statuses = sorted({f"{r.status}/{r.http_status}" for r in records})
        raise SystemExit(f"capacity phase got no ok response ({', '.join(statuses)}); see the service log")
    return {
        "rps": len(ok) / elapsed,
        "seconds": elapsed,
        "concurrency": args.capacity_concurrency,
        "ok": len(ok),
        "not_ok": len(records) - len(ok),
        "latency_p50_ms": 1000 * (percentile(ok, 50) or 0.0),
        "latency_p95_ms": 1000 * (percentile(ok, 95) or 0.0),
    }


async def run_policy(url: str, mix, arrivals, args: argparse.Namespace) -> list[Record]:
    sender = HttpSender(url, args.deadline_ms, args.timeout_s)
    try:
        for i in range(args.warm_requests):  # same short warm-up for every policy, not recorded
            await sender(mix[i % len(mix)], deadline_ms=CAPACITY_DEADLINE_MS)
        return await run_open_loop(arrivals, mix, sender, args.max_inflight)
    finally:
        await sender.aclose()


def score_sample(records: list[Record], mix: list[RequestSpec], per_level: int, seed: int) -> None:
    """PSNR-Y against the HR original for a sample of each level's ok responses; then drop bodies.

    Candidates are visited in a seeded order of arrival indices, the same for every policy, so
    policies are scored on the same arrivals wherever they all answered them.
    """
    for level in sorted({r.level for r in records}):
        candidates = sorted((r for r in records if r.level == level), key=lambda r: r.index)
        random.Random(f"{seed}-{level}").shuffle(candidates)
        for r in [r for r in candidates if r.status == "ok" and r.body][:per_level]:
            spec = mix[r.spec]
            r.measured_psnr = spec.psnr_of(r.body or b"")
            r.bicubic_psnr = spec.bicubic_psnr()
    for r in records:
        r.body = None


# --- report ---------------------------------------------------------------------------------------
def _fmt(value: float | None, spec: str) -> str:
    return "–" if value is None else format(value, spec)


def table(result: dict[str, Any]) -> str:
    """The markdown table pasted into loadtests/README.md."""
    lines = [
        "| policy | load | offered req/s | within SLO | p50 ms | p95 ms | p99 ms | ok req/s | shed "
        "| predicted PSNR-Y dB | predicted gain dB | effective gain dB "
        "| measured PSNR-Y dB (n) | measured gain dB | tiers served |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, run in result["policies"].items():
        for lv in run["levels"]:
            m = lv["measured"]
            tiers = ", ".join(f"{k} {v}" for k, v in lv["served_as"].items())
            lines.append(
                f"| {name} | {lv['multiplier']:g}× | {lv['offered_rate']:.2f} "
                f"| {_fmt(None if lv['slo_attainment'] is None else 100 * lv['slo_attainment'], '.1f')}% "
                f"| {_fmt(lv['latency_p50_ms'], '.0f')} | {_fmt(lv['latency_p95_ms'], '.0f')} "
                f"| {_fmt(lv['latency_p99_ms'], '.0f')} | {lv['throughput_rps']:.2f} "
                f"| {_fmt(None if lv['shed_rate'] is None else 100 * lv['shed_rate'], '.1f')}% "
                f"| {_fmt(lv['predicted_psnr_db'], '.2f')} | {_fmt(lv['predicted_gain_db'], '.2f')} "
                f"| {_fmt(lv['effective_gain_db'], '.2f')} | {_fmt(m['psnr_db'], '.2f')} ({m['n']}) "
                f"| {_fmt(m['gain_db'], '.2f')} | {tiers} |"
            )
    return "\n".join(lines)


def targets_text(checks: list[dict[str, Any]]) -> str:
    verdict = {True: "met", False: "NOT met", None: "not measured"}
    return "\n".join(
        f"- {c['target']} (level {c['level']}): {verdict[c['met']]} — "
        + ", ".join(
            f"{k}={_fmt(v, '.4g') if isinstance(v, float) else v}"
            for k, v in c.items()
            if k not in ("target", "level", "met")
        )
        for c in checks
    )


def _git_commit() -> str | None:
    try:
        return subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def _host() -> dict[str, Any]:
    cpu = ""
    with contextlib.suppress(OSError):
        cpu = next(
            (
                line.split(":", 1)[1].strip()
                for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")
            ),
            "",
        )
    return {
        "cpu": cpu or platform.processor(),
        "cores": os.cpu_count(),
        "loadavg_at_start": os.getloadavg(),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


# --- main -----------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    policies, adaptive_methods, chosen = resolve_policies(args)
    folders = [args.bench_dir / d for d in args.datasets.split(",") if d]
    mix = build_mix(folders, _ints(args.sides), _floats(args.scales), args.mix_size, args.seed)
    multipliers = _floats(args.multipliers)
    stamp = dt.datetime.now().strftime("%Y-%m-%d")
    name_stem = f"{stamp}-{re.sub(r'[^A-Za-z0-9_.-]', '_', args.machine)}"

    def out(suffix: str) -> Path:
        return args.out_dir / f"{name_stem}{suffix}"

    env = dict(kv.split("=", 1) for kv in args.service_env)
    started = time.monotonic()
    result: dict[str, Any] = {
        "date": dt.datetime.now().isoformat(timespec="seconds"),
        "machine": args.machine,
        "host": _host(),
        "git_commit": _git_commit(),
        "command": "python -m loadtests.compare " + shlex.join(sys.argv[1:] if argv is None else argv),
        "config": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "served": chosen,
        "mix": [{"source": s.source, "scale": s.scale, "size": [s.width, s.height]} for s in mix],
        "policies": {},
    }
    print(
        f"serving {chosen['method']} (richest {chosen['richest']}, cheapest {chosen['cheapest']}); "
        f"adaptive over {', '.join(adaptive_methods)}; {len(mix)} requests in the mix",
        flush=True,
    )

    capacity = {"rps": args.capacity_rps, "measured": False} if args.capacity_rps else None
    levels = None
    records_of: dict[str, list[Record]] = {}
    for name, policy in policies.items():
        methods = adaptive_methods if policy == "adaptive" else [chosen["method"]]
        log = out(f".{name}.log")
        print(f"[{time.monotonic() - started:6.0f} s] {name}: starting the service ({policy})", flush=True)
        with running_service(policy, args.checkpoint_dir, methods, log, env) as url:
            if capacity is None:
                capacity = asyncio.run(measure_capacity(url, mix, args)) | {"measured": True}
                rps = capacity["rps"]
                print(
                    f"[{time.monotonic() - started:6.0f} s] capacity of {policy}: {rps:.2f} req/s "
                    f"(p50 {capacity['latency_p50_ms']:.0f} ms at concurrency {args.capacity_concurrency})",
                    flush=True,
                )
            if levels is None:
                levels = profile(capacity["rps"], multipliers, args.level_seconds)
                arrivals = schedule(levels, len(mix), args.seed, poisson=args.arrivals == "poisson")
                if len(arrivals) > args.max_requests:
                    raise SystemExit(
                        f"profile has {len(arrivals)} arrivals > --max-requests {args.max_requests}"
                    )
            print(
                f"[{time.monotonic() - started:6.0f} s] {name}: {len(arrivals)} arrivals over "
                f"{sum(lv.seconds for lv in levels):.0f} s to {url} (its /metrics can be watched)",
                flush=True,
            )
            records = asyncio.run(run_policy(url, mix, arrivals, args))
        score_sample(records, mix, args.psnr_sample, args.seed)
        records_of[name] = records
        result["policies"][name] = {
            "policy": policy,
            "methods": methods,
            "levels": summarize(records, levels, args.slo_ms / 1000),
        }
    result["capacity"] = capacity
    result["paired_vs_adaptive"] = {
        other: [paired_delta(records_of["adaptive"], records_of[other], i) for i in range(len(levels))]
        for other in records_of
        if other != "adaptive" and "adaptive" in records_of
    }
    result["targets"] = check_targets(
        {k: v["levels"] for k, v in result["policies"].items()}, result["paired_vs_adaptive"]
    )
    result["wall_seconds"] = round(time.monotonic() - started, 1)

    args.out_dir.mkdir(parents=True, exist_ok=True)
    out(".json").write_text(json.dumps(result, indent=2) + "\n")
    report = table(result) + "\n\nTargets:\n" + targets_text(result["targets"]) + "\n"
    out(".md").write_text(report)
    print(report)
    drawn = not args.no_plot and plot(result, out(".png"))
    print(
        f"wrote {out('.json')}, {out('.md')}"
        + (f", {out('.png')}" if drawn else " (no plot: pip install -e '.[loadtest]')")
        + f" in {result['wall_seconds']:.0f} s"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
