"""`python -m models.bench`: cost of every tier of every method, measured side by side in one run.

For each method and tier: parameters used, MACs per output pixel at each scale, CPU latency of a
128×128 LR input (median over repeats, the configurations interleaved round-robin so that
machine noise hits all of them alike), and the achieved GFLOP/s of the whole model and of the
decoder alone, against a plain float32 matmul timed in the same run. Prints a table, writes JSON.
The input is `synthetic_photo`, not noise: content-routed MoEISR costs on it about what it costs
on photographs, far less than on uniform noise (`models.content_cost` measures this).

The MAC/px column is each tier's count (`macs`; for MoEISR the cap its budget sets); the GFLOP/s
divide the MACs the timed call actually did (`macs_done`; for MoEISR those of the experts its
mapper picked on the bench's input), so that no rate is inflated by work that was not done.

The decoder is timed on its own: `decode_image` on the state that the timed `encode` just made,
every chunk, the residual and the output included (bench 24 and earlier took the whole call's
time less the encoder's, a difference of two timings: nine such differences for MoEISR b0 ×2
at 128² ranged over 13.7–22.6 ms, a decoder of about 15 ms). Its fraction of the matmul peak
is taken per timing, against short matmuls timed right before and after it, then the median
over repeats (each repeat's fraction is in the JSON too): on a shared host the speed drifts
within a run, and a peak measured only between rounds does not see the conditions under which
a tier was timed.

`--gemm-widths` also times bare (rows × d) @ (d × d) products at the widths given, rows being the
query tile of a Galerkin decoder d wide (`gemm_rows`): the rate a decoder made only of d-wide
products could reach at best, which is what a narrow tier's fraction should be read against.
`--gemm-shapes` times any (rows × k) @ (k × n) products, e.g. an MoEISR expert's thin layers
(k = 4 offset/cell columns in, n = 3 colours out), whose BLAS rate bounds what a tier built on
them can reach; for those at most `THIN_OUTPUTS` wide it also times the compiled RGB loop
against BLAS's plain and transposed products (`thin_loop_ratios`), e.g. `--gemm-shapes
16384x256x3,2048x256x3`.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from models import galerkin, registry, thin_product
from models.allocator import retain_freed_memory
from models.base import model_range
from models.defaults import DEFAULT_MAX_QUERIES
from models.images import synthetic_photo


def gflops(macs: int, seconds: float) -> float:
    """Achieved GFLOP/s (2 FLOPs per MAC); a time that noise made zero or negative counts as 1 ns."""
    return 2 * macs / max(seconds, 1e-9) / 1e9


def matmul_gflops(n: int = 1024, repeats: int = 20, rows: int | None = None, k: int | None = None) -> float:
    """GFLOP/s of a float32 (rows × k) @ (k × n) product (square by default), median of repeats."""
    rows, k = rows or n, k or n
    a, b = torch.randn(rows, k), torch.randn(k, n)
    a @ b
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - t0)
    return gflops(rows * k * n, statistics.median(times))


def cpu_model() -> str:
    """The CPU's model name as Linux reports it, else what `platform` knows (on Linux its
    `processor()` is empty). Timings and their shares of the matmul peak differ from one CPU
    model to another (models/README), so every result names the one it was measured on."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def write_json(path: str, fields: dict[str, Any]) -> None:
    """A run's results as JSON, with the host and torch they were measured on and the date."""
    host = {"machine": platform.machine(), "cpu": cpu_model()}
    host |= {"threads": torch.get_num_threads(), "torch": torch.__version__}
    result = {**host, **fields, "date": time.strftime("%Y-%m-%d")}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(result, indent=1) + "\n")


def gemm_rows(width: int) -> int:
    """Rows of the bare d × d product at width d: the query tile that a Galerkin decoder with every
    group d wide and SRNO's head runs its per-query layers in (`GalerkinDecoder.query_tile`;
    16,384 up to d = 128, 8,192 above). Until bench 44 every width took 4,096 rows, the tile of
    earlier benches, on which BLAS runs these products faster: on an AMD EPYC host 0.97–1.06 of
    the peak at 4,096 rows against 0.80–0.91 at these (d = 64, 112, 176, 256; `--gemm-shapes`,
    10 rounds, 2 threads)."""
    return galerkin.tile_queries(max(2 * width, galerkin.PROJ_WIDTH))


def parse_shapes(widths: str, shapes: str) -> list[tuple[int, int, int]]:
    """(rows, k, n) of each bare product: `--gemm-widths` d → (`gemm_rows`(d), d, d),
    `--gemm-shapes` RxKxN as given."""
    out = [(gemm_rows(int(w)), int(w), int(w)) for w in widths.split(",") if w]
    for shape in (s for s in shapes.split(",") if s):
        rows, k, n = (int(v) for v in shape.lower().split("x"))
        out.append((rows, k, n))
    return out


THIN_OUTPUTS = 8  # `--gemm-shapes` products at most this wide also time the RGB loop (thin_product)


@torch.no_grad()
def thin_loop_ratios(rows: int, k: int, n: int, repeats: int = 20) -> dict[str, float]:
    """Time of the compiled thin-output loop (`models.thin_product`) over BLAS's, for x·Wᵀ + b
    with x (rows × k), W (n × k): against the plain product and the transposed one,
    (n × k)·(k × rows), that `mlp.thin_linear` takes off CPU. Medians of per-call ratios, the
    three calls alternating, so that drift in the host's speed reaches them alike."""
    x, weight, bias = torch.randn(rows, k), torch.randn(n, k), torch.randn(n)
    calls = {
        "loop": lambda: thin_product.linear(x, weight, bias),
        "plain": lambda: torch.addmm(bias, x, weight.t()),
        "transposed": lambda: torch.addmm(bias[:, None], weight, x.t()),
    }
    times: dict[str, list[float]] = {name: [] for name in calls}
    for i in range(repeats + 1):  # the first round is a warm-up (and compiles the loop)
        for name, call in calls.items():
            seconds, _ = timed(call)
            if i:
                times[name].append(seconds)
    loop = times["loop"]
    return {
        f"loop_over_{name}": statistics.median(a / b for a, b in zip(loop, times[name], strict=True))
        for name in ("plain", "transposed")
    }


@torch.no_grad()
def timed(fn) -> tuple[float, Any]:
    """Seconds that fn() took, and what it returned."""
    t0 = time.perf_counter()
    result = fn()
    return time.perf_counter() - t0, result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--methods", default=",".join(registry.available()))
    ap.add_argument("--scales", default="2,3,4")
    ap.add_argument("--size", type=int, default=128, help="side of the square LR input")
    ap.add_argument(
        "--input", choices=("photo", "noise"), default="photo", help="synthetic photograph or uniform noise"
    )
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--checkpoints", action="store_true", help="use shipped checkpoints, not untrained")
    ap.add_argument("--json", default="runs/bench.json")
    ap.add_argument(
        "--gemm-widths",
        default="",
        help="also time bare (query tile × d) @ (d × d) products, e.g. 64,128,256",
    )
    ap.add_argument(
        "--gemm-shapes",
        default="",
        help="also time bare (rows × k) @ (k × n) products given as RxKxN, e.g. 4096x4x256,4096x256x3",
    )
    args = ap.parse_args(argv)
    retain_freed_memory()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    scales = [float(s) for s in args.scales.split(",")]
    side = args.size
    lr = synthetic_photo(side, side) if args.input == "photo" else torch.rand(1, 3, side, side)
    models = {
        name: (registry.load(name) if args.checkpoints else registry.build(name).eval())
        for name in args.methods.split(",")
    }
    configs = [(name, tier, s) for name, m in models.items() for tier in m.tiers() for s in scales]
    totals: dict[tuple, list[float]] = {(*c[:1], c[1].name, c[2]): [] for c in configs}
    encodes: dict[tuple, list[float]] = {k: [] for k in totals}
    decodes: dict[tuple, list[float]] = {k: [] for k in totals}
    beside: dict[tuple, list[float]] = {k: [] for k in totals}  # matmul GFLOP/s around each timing
    peaks = [matmul_gflops()]
    shapes = parse_shapes(args.gemm_widths, args.gemm_shapes)
    narrow: dict[tuple, list[float]] = {sh: [] for sh in shapes}  # bare GEMM over the peak beside it
    for rep in range(args.repeats + 1):  # the first round is a warm-up
        for name, tier, s in configs:
            m, out = models[name], (round(side * s), round(side * s))
            x = model_range(lr)
            chunk = m.chunk_queries(tier.knob, DEFAULT_MAX_QUERIES, out)
            before = matmul_gflops(repeats=5) if rep else 0.0
            enc, state = timed(lambda m=m, x=x, tier=tier, out=out: m.encode(x, tier.knob, out))
            dec, _ = timed(
                lambda m=m, x=x, st=state, out=out, k=tier.knob, c=chunk: m.decode_image(st, x, out, k, c)
            )
            after = matmul_gflops(repeats=5) if rep else 0.0
            del state
            total, _ = timed(lambda m=m, tier=tier, out=out: m.upscale(lr, out, tier))
            if rep:
                totals[(name, tier.name, s)].append(total)
                encodes[(name, tier.name, s)].append(enc)
                decodes[(name, tier.name, s)].append(dec)
                beside[(name, tier.name, s)].append((before + after) / 2)
        peaks.append(matmul_gflops())
        for rows_, k, n in shapes if rep else ():
            narrow[(rows_, k, n)].append(matmul_gflops(n, rows=rows_, k=k) / peaks[-1])
    peak = statistics.median(peaks)

    rows = []
    for name, tier, s in configs:
        m, out = models[name], (round(side * s), round(side * s))
        key = (name, tier.name, s)
        total, enc, dec = (statistics.median(t[key]) for t in (totals, encodes, decodes))
        macs = m.macs(tier, (side, side), out)  # the tier's count (MoEISR: its budget's cap)
        done = m.macs_done(lr, out, tier)  # what the timed call did (MoEISR: as routed)
        dec_macs = done - m.macs(tier, (side, side), (0, 0))
        fractions = [gflops(dec_macs, d) / p for d, p in zip(decodes[key], beside[key], strict=True)]
        rows.append(
            {
                "method": name,
                "tier": tier.name,
                "knob": tier.knob_label,
                "scale": s,
                "params": tier.params,
                "macs": macs,
                "macs_per_output_pixel": macs / (out[0] * out[1]),
                "latency_ms": total * 1000,
                "encode_ms": enc * 1000,
                "decode_ms": dec * 1000,
                "macs_done": done,
                "gflops": gflops(done, total),
                "decoder_gflops": gflops(dec_macs, dec),
                "matmul_gflops_beside": statistics.median(beside[key]),
                "decoder_fraction_of_matmul": statistics.median(fractions),
                "decoder_fractions": fractions,  # per repeat, in order: the median's spread
            }
        )
    summary = {}
    for name, m in models.items():
        for s in scales:
            lat = {r["tier"]: r["latency_ms"] for r in rows if r["method"] == name and r["scale"] == s}
            tiers = [t.name for t in m.tiers()]
            summary[f"{name} x{s:g}"] = lat[tiers[0]] / lat[tiers[-1]]

    print(
        f"matmul peak (fp32, 1024³, {torch.get_num_threads()} threads): {peak:.1f} GFLOP/s between rounds; "
        "dec/peak is against matmuls timed around each timing"
    )
    print(
        f"{'method':7s} {'tier':8s} {'scale':>5s} {'params':>9s} {'MAC/px':>9s} {'ms':>9s} "
        f"{'GFLOP/s':>8s} {'dec GF/s':>8s} {'dec/peak':>8s}"
    )
    for r in rows:
        print(
            f"{r['method']:7s} {r['tier']:8s} {r['scale']:5g} {r['params']:9d} "
            f"{r['macs_per_output_pixel'] / 1e3:8.0f}k {r['latency_ms']:9.1f} {r['gflops']:8.1f} "
            f"{r['decoder_gflops']:8.1f} {r['decoder_fraction_of_matmul']:8.2f}"
        )
    # The RGB loop is timed once, after every tier's rounds, with its own alternation of loop and
    # BLAS calls (`thin_loop_ratios`): its ratios need no peak beside them.
    gemms = [
        {"rows": r, "k": k, "n": n, "fraction_of_matmul": statistics.median(narrow[(r, k, n)])}
        | (thin_loop_ratios(r, k, n) if n <= THIN_OUTPUTS else {})
        for r, k, n in shapes
    ]
    for g in gemms:
        shape = f"({g['rows']} × {g['k']}) @ ({g['k']} × {g['n']})"
        loop = ""
        if "loop_over_plain" in g:
            plain, transposed = g["loop_over_plain"], g["loop_over_transposed"]
            loop = f"; RGB loop {plain:.2f} of its time, {transposed:.2f} of the transposed one's"
        print(f"bare GEMM {shape}: {g['fraction_of_matmul']:.2f} of peak{loop}")
    print("cheapest / richest latency:", ", ".join(f"{k} {v:.2f}" for k, v in summary.items()))
    fields = {"lr_size": side, "input": args.input, "repeats": args.repeats, "matmul_peak_gflops": peak}
    fields |= {"rows": rows, "cheapest_over_richest_latency": summary, "bare_gemms": gemms}
    write_json(args.json, fields)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
