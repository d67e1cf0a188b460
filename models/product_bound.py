"""`python -m models.product_bound`: how close the Galerkin decoders come to their own matrix products.

A decoder's share of the matmul peak (`models.bench`) cannot exceed that of the matrix products
it is made of, and at a narrow tier BLAS runs those well below the peak: its products have only
64–128 columns or rows. This times, in one run and interleaved, each tier's `decode_image` and
the same products alone: the same shapes, tiles and order, GELUs fused as the decoder fuses them.
What is left out is the rest of the decoder: the k/v statistics, the lift's gather and position
product, the per-image attention maps and the bilinear residual. Both are reported as shares of
the peak, counting the decoder's full MACs; the second is the most the decoder could reach if
all else took no time. Prints a table, writes JSON. SSRNO and AnySR, outputs that fit one chunk.
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Callable
from functools import partial

import torch

from models import kv_stats, registry
from models.allocator import retain_freed_memory
from models.base import model_range
from models.bench import gflops, matmul_gflops, timed, write_json
from models.defaults import DEFAULT_MAX_QUERIES
from models.galerkin import GalerkinSR
from models.images import synthetic_photo
from models.implicit import GridAxes, spans


def products(
    model: GalerkinSR, knob, lr_size: tuple[int, int], out_size: tuple[int, int]
) -> Callable[[], None]:
    """A call that runs only the matrix products of decoding one image of lr_size to out_size at
    `knob`, on random inputs of the decoder's shapes: per lift piece its table product, per
    query tile each block's k/v product, its two FFN products (GELU fused) and the head's two.
    The image must fit one chunk (`GalerkinSR.decode_image`'s single pass)."""
    dec = model.decoder
    widths = model.decoder_widths(knob)
    total = out_size[0] * out_size[1]
    if total > model.chunk_queries(knob, DEFAULT_MAX_QUERIES, out_size):
        raise ValueError(f"{out_size} takes several chunks; the bound covers one")
    p = dec.narrowed(widths, model.width_mode)
    d = widths.trunk
    feat = torch.randn(1, model.encoder.channels, *lr_size)
    x = torch.randn(1, total, d)
    maps = [(torch.randn(1, f, d) / d**0.5, torch.randn(1, f)) for f in widths.ffn]
    axes = GridAxes.of(out_size, lr_size)
    piece, tile = dec.lift_piece(d), dec.query_tile(widths)
    bands = [axes.band(out_size[1], s, e) for s, e in spans(total, piece)]
    tiles = spans(total, tile)

    def run() -> None:
        for band in bands:
            dec.lift_table(p, feat, band)
        for s, e in tiles:
            kv_stats.product(x[:, s:e], p["kv0.w"], dec.heads)
        for i in range(dec.blocks):
            for s, e in tiles:
                y = dec.block(p, i, x[:, s:e], maps[i])
                if i + 1 < dec.blocks:
                    kv_stats.product(y, p[f"kv{i + 1}.w"], dec.heads)
                else:
                    dec.head(p, y)

    return run


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--methods", default="ssrno,anysr")
    ap.add_argument("--scales", default="2")
    ap.add_argument("--size", type=int, default=128, help="side of the square LR input")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--json", default="runs/product_bound.json")
    args = ap.parse_args(argv)
    retain_freed_memory()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    side = args.size
    lr = synthetic_photo(side, side)
    x = model_range(lr)
    configs = []
    for name in args.methods.split(","):
        model = registry.load(name)
        for tier in model.tiers():
            for s in (float(v) for v in args.scales.split(",")):
                out = (round(side * s), round(side * s))
                chunk = model.chunk_queries(tier.knob, DEFAULT_MAX_QUERIES, out)
                if out[0] * out[1] > chunk:
                    print(f"{name} {tier.name} x{s:g}: several chunks, left out")
                    continue
                state = model.encode(x, tier.knob, out)
                decode = partial(model.decode_image, state, x, out, tier.knob, chunk)
                bare = products(model, tier.knob, (side, side), out)
                dec_macs = model.macs_done(lr, out, tier) - model.macs(tier, (side, side), (0, 0))
                configs.append((name, tier.name, s, decode, bare, dec_macs))
    times: dict[tuple, dict[str, list[float]]] = {c[:3]: {"decoder": [], "products": []} for c in configs}
    peaks: list[float] = []
    for rep in range(args.repeats + 1):  # the first round is a warm-up
        for name, tier, s, decode, bare, dec_macs in configs:
            for part, fn in (("decoder", decode), ("products", bare)):
                before = matmul_gflops(repeats=5)
                seconds, _ = timed(fn)
                after = matmul_gflops(repeats=5)
                if rep:  # share of the peak timed around this call
                    peaks.append((before + after) / 2)
                    times[(name, tier, s)][part].append(gflops(dec_macs, seconds) / peaks[-1])

    rows = []
    peak = statistics.median(peaks)
    threads = torch.get_num_threads()
    print(f"matmul peak (fp32, 1024³, {threads} threads) around the timings: {peak:.1f} GFLOP/s (median)")
    print(f"{'method':7s} {'tier':6s} {'scale':>5s} {'dec/peak':>9s} {'products/peak':>14s}")
    for name, tier, s, *_ in configs:
        shares = {part: statistics.median(v) for part, v in times[(name, tier, s)].items()}
        fractions = {f"{part}_fraction_of_matmul": v for part, v in shares.items()}
        rows.append({"method": name, "tier": tier, "scale": s, **fractions})
        print(f"{name:7s} {tier:6s} {s:5g} {shares['decoder']:9.2f} {shares['products']:14.2f}")
    fields = {"lr_size": side, "repeats": args.repeats, "matmul_peak_gflops": peak, "rows": rows}
    write_json(args.json, fields)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
