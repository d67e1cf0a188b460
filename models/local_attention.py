"""CLIT's local attention over gathered codes on CPU as two compiled loops (numba).

Per query the attention reads its g² neighbours' k and v rows from the band tables, takes one
dh-long dot product per neighbour and head, a softmax over the neighbours, and writes the
attention-weighted v rows. As torch ops these were two gathers (copies of g²·dim floats per query
each), two elementwise products, a sum and their temporaries, about 60 ms of CLIT stages1 ×2's
363 ms decoder (128², 2 threads, one profile). Here the rows are read from the tables in place:
one loop makes the logits (k·q, scaled, plus the positional bias), torch's softmax normalises
them (vectorised exp), a second loop writes the weighted v rows: CLIT's decoders take 0.88–0.90
of their time (stages1 ×2 and ×4, stages3 ×2; two worktrees, three alternating rounds). The
logits are laid out neighbour-major, (g², N, heads), so that the softmax over the neighbours
runs along whole vectors of queries and heads: per 2,048-query tile 62 µs against 326 µs
with the neighbours in the middle, (N, g², heads), where each vector held one query's 8 heads;
CLIT stages1 ×2 took 0.94–0.99 of its decoder time, ×4 0.96–1.00, stages3 ×2 0.95–0.97 (two
worktrees, alternating). The first loop also samples each query's q itself, the bilinear mix
of four rows of a pixel-major q band, in place of grid_sample over the channel-major band and a
copy of its result into query-major rows (per decode about 15 ms and 5.5 ms of stages1 ×2's
decoder): stages1 ×2 took 0.87–0.98 of its decoder time, ×4 0.92–1.01, stages2 ×3 0.93–0.94
(two worktrees, alternating). Nothing here is counted as MACs either way (elementwise, like
the reference's); the torch path stays the reference on CUDA, with autograd and under dispatch
modes.
"""

from __future__ import annotations

from functools import cache

import numpy as np
import torch

from models.loop_pool import arrays, numba_for_host, run_blocks

QUERY_BLOCK = 256  # queries per block handed to a thread


@cache
def _kernels():
    numba = numba_for_host()
    njit, types = numba.njit, numba.types
    f4, i8 = types.float32, types.int64
    c2, c3 = types.Array(f4, 2, "C"), types.Array(f4, 3, "C")
    rows = types.Array(i8, 2, "C")
    jit = {"nogil": True, "fastmath": True, "error_model": "numpy"}

    @njit(types.void(c2, rows, c2, c2, i8, i8, i8, c3, f4, c3, i8, i8), **jit)
    def logits(
        k_table, index, q_table, spot, queries, per_image, width, position, scale, out, start, stop
    ):  # pragma: no cover
        """Scaled k·q plus the positional bias, out (g², N, heads), q made here per query: the
        bilinear mix of the four q_table rows around its spot (y, x), in pixels of its image's
        band (per_image rows of q_table, `width` pixels wide; `queries` queries per image)."""
        g2, heads, dim = index.shape[1], position.shape[2], q_table.shape[1]
        dh, height = dim // heads, per_image // width
        q = np.empty(dim, np.float32)
        for i in range(start, stop):
            y, x = spot[i, 0], spot[i, 1]
            y0, x0 = int(y), int(x)  # floors: spots are clipped to the band, so never negative
            fy, fx = y - np.float32(y0), x - np.float32(x0)
            # The spot is clipped to the band (grid_sample's border padding), so a neighbour past
            # its last row or column has weight 0: the edge row is read in its place.
            y1, x1 = min(y0 + 1, height - 1), min(x0 + 1, width - 1)
            base = (i // queries) * per_image
            nw, ne = base + y0 * width + x0, base + y0 * width + x1
            sw, se = base + y1 * width + x0, base + y1 * width + x1
            w_nw, w_ne = (np.float32(1.0) - fx) * (np.float32(1.0) - fy), fx * (np.float32(1.0) - fy)
            w_sw, w_se = (np.float32(1.0) - fx) * fy, fx * fy
            for d in range(dim):  # indexed in full: a sliced row per query costs reference counting
                q[d] = (
                    q_table[nw, d] * w_nw
                    + q_table[ne, d] * w_ne
                    + q_table[sw, d] * w_sw
                    + q_table[se, d] * w_se
                )
            for j in range(g2):
                k = k_table[index[i, j]]
                for h in range(heads):
                    acc = np.float32(0.0)
                    for d in range(dh):
                        acc += k[h * dh + d] * q[h * dh + d]
                    out[j, i, h] = acc * scale + position[i, j, h]

    @njit(types.void(c2, rows, c3, c2, i8, i8), **jit)
    def weighted(v_table, index, attn, out, start, stop):  # pragma: no cover
        g2, heads = index.shape[1], attn.shape[2]  # attn (g², N, heads)
        dim = v_table.shape[1]
        dh = dim // heads
        for i in range(start, stop):
            for j in range(g2):
                v = v_table[index[i, j]]
                for h in range(heads):
                    a = attn[j, i, h]
                    base = j * dim + h * dh
                    for d in range(dh):
                        out[i, base + d] = a * v[h * dh + d]

    return logits, weighted


def attend(
    k_table: torch.Tensor,
    v_table: torch.Tensor,
    index: torch.Tensor,
    q_bands: torch.Tensor,
    spot: torch.Tensor,
    position: torch.Tensor,
) -> torch.Tensor:
    """Attention-weighted v rows (N, g²·dim) of N queries, each image's after the other's.

    index (N, g²): the neighbours' rows of the (rows, dim) k and v tables. q_bands (B, h, w,
    dim): each image's q band, pixel-major; a query's q is the bilinear sample of its image's
    band at its spot (N, 2), (y, x) in band pixels, clipped to the band. position (N, g², heads):
    the positional bias. CPU, float32, no autograd (the caller checks `loop_pool.can_run`).
    """
    n, g2 = index.shape
    images, height, width, dim = q_bands.shape
    heads = position.shape[2]
    logit = np.empty((g2, n, heads), np.float32)  # neighbour-major: the softmax runs over dim 0
    k, idx, q, spots, pos = arrays(k_table, index, q_bands.reshape(-1, dim), spot, position)
    scale = np.float32((dim // heads) ** -0.5)
    args = [k, idx, q, spots, n // images, height * width, width, pos, scale, logit]
    run_blocks(_kernels()[0], n, args, QUERY_BLOCK)
    attn = torch.from_numpy(logit).softmax(dim=0)
    out = np.empty((n, g2 * dim), np.float32)
    v, weights = arrays(v_table, attn)
    run_blocks(_kernels()[1], n, [v, idx, weights, out], QUERY_BLOCK)
    return torch.from_numpy(out)
