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
worktrees, alternating). No
product here is counted as MACs either way (elementwise, like the reference's); the torch path
stays the reference on CUDA, with autograd and under dispatch modes.
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

    @njit(types.void(c2, rows, c3, c3, f4, c3, i8, i8), **jit)
    def logits(k_table, index, q, position, scale, out, start, stop):  # pragma: no cover
        g2, heads, dh = index.shape[1], q.shape[1], q.shape[2]
        for i in range(start, stop):
            for j in range(g2):
                k = k_table[index[i, j]]
                for h in range(heads):
                    acc = np.float32(0.0)
                    for d in range(dh):
                        acc += k[h * dh + d] * q[i, h, d]
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
    q: torch.Tensor,
    position: torch.Tensor,
) -> torch.Tensor:
    """Attention-weighted v rows (N, g²·dim) of N queries: index (N, g²) rows of the (rows, dim)
    tables, q (N, heads, dh), position (N, g², heads) the positional bias. CPU, float32, no
    autograd (the caller checks `loop_pool.can_run`)."""
    n, g2 = index.shape
    heads, dh = q.shape[1:]
    logit = np.empty((g2, n, heads), np.float32)  # neighbour-major: the softmax runs over dim 0
    k, idx, qa, pos = arrays(k_table, index, q, position)
    run_blocks(_kernels()[0], n, [k, idx, qa, pos, np.float32(dh**-0.5), logit], QUERY_BLOCK)
    attn = torch.from_numpy(logit).softmax(dim=0)
    out = np.empty((n, g2 * heads * dh), np.float32)
    v, at = arrays(v_table, attn)
    run_blocks(_kernels()[1], n, [v, idx, at, out], QUERY_BLOCK)
    return torch.from_numpy(out)
