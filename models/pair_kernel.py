"""An MLP decoder run on (query, neighbour) pairs whose first layer was taken once per LR pixel.

Per pair the decoder gathers its pixel's row of the first layer's feature product (the `table`,
bias included where several decoders share it; where one takes every pair, the loops add its
bias, so that the table is a bare product), adds the product of the pair's two offset columns,
and runs the remaining layers. A deep decoder's remaining layers are wide matrix products and
run well as torch ops, a tile of pairs at a time. A two-layer decoder (MoEISR's lightest expert)
has none: gather, 2-column product, ReLU and the 3-wide output product are four passes over a
(pairs × hidden) tensor, each bound by memory, which kept its tier at 0.13–0.17 of the matmul
peak (bench 24). On CPU it therefore runs as one compiled loop (numba) in which the hidden
vector never leaves registers.
Where one decoder takes every LR pixel of the image, the loop runs over queries, decodes each
query's four pairs side by side (each weight loaded once for all four) and mixes their last
hidden activations, so that the linear output layer runs once per query, not once per pair
(`decode_queries`; the torch path does the same, `query_macs` counts it): the query loop took
0.74 of the time of mixing four outputs (×2–×4, one thread, both loops in one process).
Otherwise it runs over the pairs it is given (`decode_pairs`). For MoEISR's b0, `decode_grid`
also finds each query's neighbours, offsets and weights from per-axis tables and adds the
bilinear upsample, writing finished output pixels: b0's decoder then took 0.65–0.73 of the time
it took with the per-query geometry, coordinates and upsample (128² input at ×2–×4, 2 threads,
Xeon with AVX-512). Two neighbouring pixels of an output row that share their four LR
neighbours (runs of them make up the grid from ×2 up) are decoded together (`mixed_two`), each
table row, weight and row-offset product loaded or made once for both: b0's decoder took
0.92–1.00 / 0.94–0.95 / 0.89–0.99 / 0.92 of its time at ×2 / ×3 / ×4 / ×8 (both loops in one
process, 20 alternating rounds, twice), medians 0.99 / 0.93 at ×2 / ×4 across processes
(`scripts/ab_bench.sh`, 4 rounds, at an hour when b0's decoder times varied by half).

The torch path stays the reference: it runs on CUDA, with autograd, and under any torch dispatch
mode (the FLOP counter in the tests, tracers), which must see every product the decoder does.
"""

from __future__ import annotations

from functools import cache

import numpy as np
import torch
import torch.nn.functional as F

from models.grid_loops import ensemble_weights
from models.implicit import GridAxes
from models.loop_pool import arrays, can_run, numba_for_host, run_blocks
from models.mlp import MLP

# (query, neighbour) pairs per tile of a deep decoder's layers: its 256-wide hidden activations
# (4 MiB) stay in cache from one layer to the next.
PAIR_TILE = 4096
# Items (pairs or queries) per block of a fused loop handed to a thread (0.1–0.3 ms of work).
PAIR_BLOCK = 8192
# The fused loops' fixed shape: 2 offset columns in, RGB out.
POS_COLUMNS, OUT_CHANNELS = 2, 3


@cache
def _kernels():
    """The fused loops, compiled on first use (about 2 s for the three, numba's import included)
    rather than at import, all at once for the C-contiguous float32/int64 arrays `run_blocks` passes:
    a service's warm-up compiles them, whichever routing its small image gets, not its first
    request."""
    numba = numba_for_host()
    njit, types = numba.njit, numba.types
    grid_weights = ensemble_weights()  # a grid query's pair weights

    f4, i8 = types.float32, types.int64
    c1, c2, c3, c4 = (types.Array(f4, n, "C") for n in (1, 2, 3, 4))
    rows1, rows3 = types.Array(i8, 1, "C"), types.Array(i8, 3, "C")
    ax_i, ax_f = types.Array(i8, 2, "C"), c2  # (2, n): an axis's two neighbours per output line

    @njit(types.void(c2, rows1, c2, c2, c2, c1, c2, i8, i8), nogil=True, fastmath=True)
    def pairs(table, rows, pos, pos_weight, out_weight, out_bias, out, start, stop):  # pragma: no cover
        zero = np.float32(0.0)
        for i in range(start, stop):
            r, x, y = rows[i], pos[i, 0], pos[i, 1]
            o0, o1, o2 = zero, zero, zero
            for k in range(table.shape[1]):
                v = max(table[r, k] + x * pos_weight[0, k] + y * pos_weight[1, k], zero)
                o0 += v * out_weight[0, k]
                o1 += v * out_weight[1, k]
                o2 += v * out_weight[2, k]
            out[i, 0] = o0 + out_bias[0]
            out[i, 1] = o1 + out_bias[1]
            out[i, 2] = o2 + out_bias[2]

    @njit(inline="always", fastmath=True)
    def mixed(table, rows, offsets, weights, layers):  # pragma: no cover
        """One query's four pairs side by side and their mix, taken before the output layer
        (which is linear): rows (4,) into table, offsets (4 × (2,)) the pairs' two offset
        columns, weights (4,); layers: (offset columns, first-layer bias, output weight, its
        bias). The first layer's bias is added here, with the offset product,
        at no cost where pairs share an offset (b0's grid: a multiply-add instead of a multiply)."""
        zero = np.float32(0.0)
        pos_weight, first_bias, out_weight, out_bias = layers
        r0, r1, r2, r3 = rows
        (a0, b0), (a1, b1), (a2, b2), (a3, b3) = offsets
        w0, w1, w2, w3 = weights
        s0, s1, s2 = zero, zero, zero
        for k in range(table.shape[1]):
            pa, pb, c = pos_weight[0, k], pos_weight[1, k], first_bias[k]
            m = w0 * max(table[r0, k] + (a0 * pa + c) + b0 * pb, zero)
            m += w1 * max(table[r1, k] + (a1 * pa + c) + b1 * pb, zero)
            m += w2 * max(table[r2, k] + (a2 * pa + c) + b2 * pb, zero)
            m += w3 * max(table[r3, k] + (a3 * pa + c) + b3 * pb, zero)
            s0 += m * out_weight[0, k]
            s1 += m * out_weight[1, k]
            s2 += m * out_weight[2, k]
        total = w0 + w1 + w2 + w3
        return s0 + total * out_bias[0], s1 + total * out_bias[1], s2 + total * out_bias[2]

    @njit(inline="always", fastmath=True)
    def mixed_two(table, rows, rel_y, rel_x, weights, layers):  # pragma: no cover
        """`mixed` for two queries of one output row whose four neighbours are the same LR
        pixels (runs of them make up b0's grid at ×2 and up): rel_y the shared row offsets,
        rel_x the two queries' column offsets, weights their pairs' weights. Each table row,
        weight and row-offset product is loaded or made once for both, so per hidden unit
        and query the loop does 18 vector operations instead of 21 (by count, ReLU and the
        table's add included) and half the loads."""
        zero = np.float32(0.0)
        pos_weight, first_bias, out_weight, out_bias = layers
        r0, r1, r2, r3 = rows
        y0, y1 = rel_y
        (a0, a1), (b0, b1) = rel_x
        (v0, v1, v2, v3), (w0, w1, w2, w3) = weights
        s0, s1, s2, t0, t1, t2 = zero, zero, zero, zero, zero, zero
        for k in range(table.shape[1]):
            pa, pb, c = pos_weight[0, k], pos_weight[1, k], first_bias[k]
            above, below = y0 * pa + c, y1 * pa + c
            u0, u1 = table[r0, k] + above, table[r1, k] + above
            u2, u3 = table[r2, k] + below, table[r3, k] + below
            m = v0 * max(u0 + a0 * pb, zero)
            m += v1 * max(u1 + a1 * pb, zero)
            m += v2 * max(u2 + a0 * pb, zero)
            m += v3 * max(u3 + a1 * pb, zero)
            n = w0 * max(u0 + b0 * pb, zero)
            n += w1 * max(u1 + b1 * pb, zero)
            n += w2 * max(u2 + b0 * pb, zero)
            n += w3 * max(u3 + b1 * pb, zero)
            o0, o1, o2 = out_weight[0, k], out_weight[1, k], out_weight[2, k]
            s0, s1, s2 = s0 + m * o0, s1 + m * o1, s2 + m * o2
            t0, t1, t2 = t0 + n * o0, t1 + n * o1, t2 + n * o2
        v, w = v0 + v1 + v2 + v3, w0 + w1 + w2 + w3
        return (
            (s0 + v * out_bias[0], s1 + v * out_bias[1], s2 + v * out_bias[2]),
            (t0 + w * out_bias[0], t1 + w * out_bias[1], t2 + w * out_bias[2]),
        )

    @njit(inline="always", fastmath=True)
    def far_share(near, far):  # pragma: no cover
        """The far neighbour's share on one axis of the bilinear upsample, border-padded like
        `bilinear_at`: the offset from the near one over their distance; at an edge, where
        both neighbours are the edge pixel, a half."""
        d = abs(near) + abs(far)
        return abs(near) / d if d > np.float32(0.0) else np.float32(0.5)

    @njit(inline="always", fastmath=True)
    def residual_base(image, b, c, t, u, left, right, fy, fx):  # pragma: no cover
        """The bilinear upsample of channel c at a grid query (`far_share` per axis)."""
        lr = image[b, c]
        upper = lr[t, left] + fx * (lr[t, right] - lr[t, left])
        lower = lr[u, left] + fx * (lr[u, right] - lr[u, left])
        return upper + fy * (lower - upper)

    @njit(types.void(c2, rows3, c4, c3, c2, c1, c2, c1, c3, i8, i8), nogil=True, fastmath=True)
    def queries(
        table, rows, rel, weight, pos_weight, first_bias, out_weight, out_bias, out, start, stop
    ):  # pragma: no cover
        q = rows.shape[2]
        layers = (pos_weight, first_bias, out_weight, out_bias)
        for i in range(start, stop):
            b, j = i // q, i % q
            four = (rows[b, 0, j], rows[b, 1, j], rows[b, 2, j], rows[b, 3, j])
            offsets = (
                (rel[b, 0, j, 0], rel[b, 0, j, 1]),
                (rel[b, 1, j, 0], rel[b, 1, j, 1]),
                (rel[b, 2, j, 0], rel[b, 2, j, 1]),
                (rel[b, 3, j, 0], rel[b, 3, j, 1]),
            )
            weights = (weight[b, 0, j], weight[b, 1, j], weight[b, 2, j], weight[b, 3, j])
            out[b, j, 0], out[b, j, 1], out[b, j, 2] = mixed(table, four, offsets, weights, layers)

    @njit(
        types.void(c2, ax_i, ax_f, ax_i, ax_f, c4, c2, c1, c2, c1, c3, i8, i8, i8, i8, i8, i8),
        nogil=True,
        fastmath=True,
    )
    def grid(
        table,
        iy,
        ry,
        ix,
        rx,
        image,
        pos_weight,
        first_bias,
        out_weight,
        out_bias,
        out,
        first,
        count,
        lo,
        band,
        start,
        stop,
    ):  # pragma: no cover
        w, width = image.shape[3], ix.shape[1]
        layers = (pos_weight, first_bias, out_weight, out_bias)
        b, at = start // count, first + start % count
        y, x = at // width, at % width
        i = start
        while i < stop:
            t, u, left, right = iy[0, y], iy[1, y], ix[0, x], ix[1, x]  # LR rows and columns
            top, bottom = (t - lo) * w + b * band, (u - lo) * w + b * band
            rows = (top + left, top + right, bottom + left, bottom + right)
            y0, y1, x0, x1 = ry[0, y], ry[1, y], rx[0, x], rx[1, x]
            fy, fx = far_share(y0, y1), far_share(x0, x1)
            # The next pixel of this row, image and span, if it has the same four neighbours.
            two = (
                i + 1 < stop
                and x + 1 < width
                and at + 1 < first + count
                and ix[0, x + 1] == left
                and ix[1, x + 1] == right
            )
            if two:
                z0, z1 = rx[0, x + 1], rx[1, x + 1]
                weights = (grid_weights(y0, y1, x0, x1), grid_weights(y0, y1, z0, z1))
                o, p = mixed_two(table, rows, (y0, y1), ((x0, x1), (z0, z1)), weights, layers)
                fz = far_share(z0, z1)
                for c in range(OUT_CHANNELS):
                    out[b, c, at] = o[c] + residual_base(image, b, c, t, u, left, right, fy, fx)
                    out[b, c, at + 1] = p[c] + residual_base(image, b, c, t, u, left, right, fy, fz)
            else:
                offsets = ((y0, x0), (y0, x1), (y1, x0), (y1, x1))
                o = mixed(table, rows, offsets, grid_weights(y0, y1, x0, x1), layers)
                for c in range(OUT_CHANNELS):
                    out[b, c, at] = o[c] + residual_base(image, b, c, t, u, left, right, fy, fx)
            # The next pixel (or the one after), without two integer divisions per pixel
            # (`lift_grid` does the same); a pair never ends a row, image or span.
            for _ in range(2 if two else 1):
                i, at, x = i + 1, at + 1, x + 1
                if x == width:
                    y, x = y + 1, 0
                if at == first + count:
                    b, at = b + 1, first
                    y, x = first // width, first % width

    return pairs, queries, grid


def fusable(decoder: MLP, pos_weight: torch.Tensor, *tensors: torch.Tensor) -> bool:
    """Whether the fused loops can stand in for the torch ops on these inputs without anyone
    missing them; pos_weight: the first layer's weights (hidden, k) on the offset columns."""
    tensors = (pos_weight, *tensors, *decoder.parameters())
    return (
        len(decoder.net) == 3  # Linear, ReLU, Linear
        and isinstance(decoder.net[1], torch.nn.ReLU)
        and pos_weight.shape[1] == POS_COLUMNS
        and decoder.net[2].out_features == OUT_CHANNELS
        and can_run(*tensors)
    )


def decode_pairs(
    decoder: MLP, table: torch.Tensor, rows: torch.Tensor, pos: torch.Tensor, pos_weight: torch.Tensor
) -> torch.Tensor:
    """`decoder` on each pair (n, out): its first layer is `table[rows] + pos @ pos_weight.T`.

    table: (P, hidden) per-pixel product of the other columns, with the first layer's bias; rows:
    (n,) index into it; pos: (n, k) offset columns; pos_weight: (hidden, k) the weights on them.
    """
    if fusable(decoder, pos_weight, table, pos):
        out = np.empty((rows.shape[0], OUT_CHANNELS), np.float32)
        args = [*arrays(table, rows, pos), *_weights(decoder, pos_weight), out]
        run_blocks(_kernels()[0], rows.shape[0], args, PAIR_BLOCK)
        return torch.from_numpy(out)
    y = pos.new_empty(pos.shape[0], decoder.net[-1].out_features)
    pos_t = pos_weight.t()
    for s in range(0, pos.shape[0], PAIR_TILE):  # a tile's hidden activations stay in cache
        at = slice(s, s + PAIR_TILE)
        # The gathered rows are the output buffer: the offset product adds into them.
        hidden = table.index_select(0, rows[at]).addmm_(pos[at], pos_t)
        y[at] = decoder.after_first(hidden)
    return y


def decode_queries(
    decoder: MLP,
    table: torch.Tensor,
    bias: torch.Tensor,
    rows: torch.Tensor,
    rel: torch.Tensor,
    weight: torch.Tensor,
    pos_weight: torch.Tensor,
) -> torch.Tensor:
    """Each query's bilinear mix (B, Q, out) of `decoder` on its four pairs, this one decoder
    taking every pair: rows (B, 4, Q) into table, offsets rel (B, 4, Q, 2), weight (B, 4, Q);
    the first layer is `table[rows] + bias + rel @ pos_weight.T`.

    The mix is taken before the output layer, which is linear: one output product per query
    instead of one per pair, the bias times the sum of the weights (`query_macs`). Fused, nothing
    per pair is written to memory: at the cheapest tiers the pairs' offsets, their outputs and
    their mix cost as much time as the decoder itself.
    """
    b, _, q = rows.shape
    if fusable(decoder, pos_weight, table, rel, weight):
        out = np.empty((b, q, OUT_CHANNELS), np.float32)
        args = [*arrays(table, rows, rel, weight), *_weights(decoder, pos_weight, bias), out]
        run_blocks(_kernels()[1], b * q, args, PAIR_BLOCK)
        return torch.from_numpy(out)
    last, pos_t = decoder.net[-1], pos_weight.t()
    y = rel.new_empty(b, q, last.out_features)
    step = PAIR_TILE // 4
    for s in range(0, q, step):  # a tile's hidden activations stay in cache
        at = slice(s, s + step)
        tile = rows[:, :, at]
        # The gathered rows are the output buffer: the offset product and the bias add into them.
        pos = rel[:, :, at].reshape(-1, rel.shape[-1])
        hidden = table.index_select(0, tile.reshape(-1)).addmm_(pos, pos_t).add_(bias)
        hidden = decoder.between(hidden).view(*tile.shape, -1)  # (B, 4, tile, hidden)
        mixed = torch.einsum("bkqh,bkq->bqh", hidden, weight[:, :, at])
        y[:, at] = F.linear(mixed, last.weight) + weight[:, :, at].sum(1)[..., None] * last.bias
    return y


def query_macs(decoder: MLP, pair_macs: int) -> int:
    """MACs per query of `decode_queries` (and `decode_grid`): four pairs up to the output layer,
    their mix (one multiply-add per hidden unit and pair) and one output product; pair_macs: the
    decoder's MACs per pair when each pair runs the output layer (`decode_pairs`)."""
    last = decoder.net[-1]
    return 4 * (pair_macs - last.in_features * last.out_features) + 4 * last.in_features + last.weight.numel()


def decode_grid(
    decoder: MLP,
    table: torch.Tensor,
    bias: torch.Tensor,
    band: tuple[int, int],
    axes: GridAxes,
    image: torch.Tensor,
    pos_weight: torch.Tensor,
    out: torch.Tensor,
    queries: tuple[int, int],
) -> None:
    """Output pixels [start, stop) (row-major) of every image, finished, into out (B, 3, H·W):
    `decoder` on each pixel's four pairs, their bilinear mix, plus the bilinear upsample of the
    LR image (B, 3, h, w) at the pixel (the residual's base), this one decoder taking every pair.

    table: (B·P, hidden) the first layer's per-pixel rows of LR rows band = (lo, hi), image after
    image (P = (hi − lo)·w pixels each), without the layer's bias (hidden,), which the loop adds.
    Nothing per query is read but the output position: the neighbours, offsets and weights come
    from the axes' tables, so no per-query geometry, no coordinates and no separate upsample are
    computed, and the output is written in place.
    CPU only, under the conditions of `fusable` (the caller checks them).
    """
    start, stop = queries
    (lo, hi), (b, w) = band, (image.shape[0], image.shape[3])
    loop_args = arrays(table, axes.rows, axes.row_rel, axes.cols, axes.col_rel, image)
    weights = _weights(decoder, pos_weight, bias)
    args = [*loop_args, *weights, out.numpy(), start, stop - start, lo, (hi - lo) * w]
    run_blocks(_kernels()[2], b * (stop - start), args, PAIR_BLOCK)


def _weights(decoder: MLP, pos_weight: torch.Tensor, bias: torch.Tensor | None = None) -> list[np.ndarray]:
    """The loops' weights: offset columns (k, hidden), the first layer's bias where the loop adds
    it, output layer (out, hidden) and its bias."""
    last = decoder.net[2]
    first = [] if bias is None else [bias]
    return arrays(pos_weight.t(), *first, last.weight, last.bias)
