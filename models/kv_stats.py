"""Galerkin attention's per-tile k/v statistics on CPU as one compiled loop (numba).

A Galerkin block needs, per head and over a tile's pixels, Σ r_k r_v k̃ᵀṽ, Σ r_k k̃ and Σ r_v ṽ,
r being each pixel's inverse RMS of its head's k̃ (or ṽ) (`GalerkinDecoder.kv_sum`). As torch ops
these are some ten passes over the (2, heads, dh, pixels) product (square, sum, rsqrt, scales,
three small products), each bound by memory: per 4,096-query tile they took 3.4× the time of
the k/v product itself at d = 64 (dh = 4) and 1.2× at d = 128 (dh = 8). Here each head's rows
are taken a chunk of pixels at a time and read twice: once for the square sums, once to write
the scaled rows, whose outer product is then taken in 4 × 4 register blocks (the head dimension
padded to a multiple of 4 with zero rows); the product's bias is added on the way, so the
product runs without one. SSRNO's and AnySR's decoders then took 0.84–0.95 of their time
(every tier at ×2 and ×4, 128² input, 2 threads, interleaved with the torch ops 5 times; Xeon
host). The chunk's scratch rows stay in the L1 cache (whole-tile rows did not: 0.94–1.00 of
the decoder time, SSRNO XS–X and AnySR w0.5, three alternating runs). The heads are split over
torch's OpenMP threads where the loops share them (`loop_pool.shares_torch_openmp`: SSRNO XS–X
and AnySR w0.5 0.91–0.97); otherwise the loop runs on the calling thread, since threads of our
own competed with torch's spinning OpenMP workers (two threads took 1.03–1.05 of one's time).

The torch path stays the reference: it runs on CUDA, with autograd and under torch dispatch
modes (the FLOP counter in the tests), which must see every product; `tests/test_kv_stats.py`
checks both give the same sums.
"""

from __future__ import annotations

from functools import cache

import numpy as np
import torch

from models import mlp
from models.loop_pool import can_run, numba_for_host, run_blocks

BLOCK = 4  # the outer product's register block: 16 accumulators
# Floats per scratch row block (k̃·r_k·r_v and ṽ of one chunk of pixels, 2 × 12 KiB): a chunk's
# statistics are made and summed while it stays in the L1 cache.
SCRATCH_FLOATS = 3072


def padded(dh: int) -> int:
    """The head dimension rounded up to whole register blocks."""
    return -(-dh // BLOCK) * BLOCK


@cache
def _kernel():
    """The loop, compiled on first use (a service's warm-up decodes a small image)."""
    import math

    numba = numba_for_host()
    njit, types = numba.njit, numba.types

    f4 = types.float32
    eps = np.float32(1e-5)  # F.layer_norm's default, which the weights were trained with

    # error_model="numpy": without it numba guards every division against zero, and the loops
    # with one stay scalar.
    jit = {"nogil": True, "fastmath": True, "error_model": "numpy"}

    @njit(inline="always", **jit)
    def outer_block(a, b, i0, j0, s):  # pragma: no cover
        """s[i0:i0+4, j0:j0+4] += a[i0:i0+4] · b[j0:j0+4]ᵀ, summed over the columns."""
        z = np.float32(0.0)
        s00 = s01 = s02 = s03 = s10 = s11 = s12 = s13 = z
        s20 = s21 = s22 = s23 = s30 = s31 = s32 = s33 = z
        a0, a1, a2, a3 = a[i0], a[i0 + 1], a[i0 + 2], a[i0 + 3]
        b0, b1, b2, b3 = b[j0], b[j0 + 1], b[j0 + 2], b[j0 + 3]
        for t in range(a.shape[1]):
            x0, x1, x2, x3 = a0[t], a1[t], a2[t], a3[t]
            y0, y1, y2, y3 = b0[t], b1[t], b2[t], b3[t]
            s00 += x0 * y0
            s01 += x0 * y1
            s02 += x0 * y2
            s03 += x0 * y3
            s10 += x1 * y0
            s11 += x1 * y1
            s12 += x1 * y2
            s13 += x1 * y3
            s20 += x2 * y0
            s21 += x2 * y1
            s22 += x2 * y2
            s23 += x2 * y3
            s30 += x3 * y0
            s31 += x3 * y1
            s32 += x3 * y2
            s33 += x3 * y3
        s[i0, j0] += s00
        s[i0, j0 + 1] += s01
        s[i0, j0 + 2] += s02
        s[i0, j0 + 3] += s03
        s[i0 + 1, j0] += s10
        s[i0 + 1, j0 + 1] += s11
        s[i0 + 1, j0 + 2] += s12
        s[i0 + 1, j0 + 3] += s13
        s[i0 + 2, j0] += s20
        s[i0 + 2, j0 + 1] += s21
        s[i0 + 2, j0 + 2] += s22
        s[i0 + 2, j0 + 3] += s23
        s[i0 + 3, j0] += s30
        s[i0 + 3, j0 + 1] += s31
        s[i0 + 3, j0 + 2] += s32
        s[i0 + 3, j0 + 3] += s33

    c3, c4, c5 = (types.Array(f4, n, "C") for n in (3, 4, 5))

    @njit(types.void(c5, c3, c4, c3, c3, types.int64, types.int64), **jit)
    def stats(kv, bias, s, ks, vs, start, stop):  # pragma: no cover
        heads, dh, n = kv.shape[2], kv.shape[3], kv.shape[4]
        dhp = s.shape[2]
        inv = np.float32(1.0) / np.float32(dh)
        # Scratch rows of one chunk of pixels: k̃·r_k·r_v and ṽ, padded with zero rows to whole blocks.
        chunk = min(n, max(64, SCRATCH_FLOATS // dhp))
        kw = np.zeros((dhp, chunk), np.float32)
        vb = np.zeros((dhp, chunk), np.float32)
        rk = np.empty(chunk, np.float32)
        rv = np.empty(chunk, np.float32)
        for bh in range(start, stop):  # (image, head) pairs
            b, h = bh // heads, bh % heads
            k, v, bk, bv = kv[b, 0, h], kv[b, 1, h], bias[0, h], bias[1, h]
            s[b, h] = 0
            ks[b, h] = 0
            vs[b, h] = 0
            for t0 in range(0, n, chunk):
                m = min(chunk, n - t0)
                rk[:] = 0
                rv[:] = 0
                for i in range(dh):
                    ki, vi, ci, di = k[i, t0 : t0 + m], v[i, t0 : t0 + m], bk[i], bv[i]
                    for t in range(m):
                        y = ki[t] + ci
                        z = vi[t] + di
                        rk[t] += y * y
                        rv[t] += z * z
                for t in range(m):
                    rk[t] = np.float32(1.0) / math.sqrt(rk[t] * inv + eps)
                    rv[t] = np.float32(1.0) / math.sqrt(rv[t] * inv + eps)
                for i in range(dh):
                    ki, vi, ci, di = k[i, t0 : t0 + m], v[i, t0 : t0 + m], bk[i], bv[i]
                    kwi, vbi = kw[i], vb[i]
                    sk = np.float32(0.0)
                    sv = np.float32(0.0)
                    for t in range(m):
                        y = (ki[t] + ci) * rk[t]
                        z = vi[t] + di
                        kwi[t] = y * rv[t]
                        vbi[t] = z
                        sk += y
                        sv += z * rv[t]
                    ks[b, h, i] += sk
                    vs[b, h, i] += sv
                if m < chunk:  # a short last chunk: the columns it leaves add nothing
                    vb[:, m:] = 0
                for i0 in range(0, dhp, BLOCK):
                    for j0 in range(0, dhp, BLOCK):
                        outer_block(kw, vb, i0, j0, s[b, h])

    return stats


def product(x: torch.Tensor, weight: torch.Tensor, heads: int) -> torch.Tensor:
    """[k̃; ṽ] without its bias, pixels last: (B, 2, heads, dh, N) for x (B, N, d).

    On CPU, oneDNN's linear layer with the roles swapped: the weight W as its input and the
    tile x as its weight, which is W·xᵀ, at about the speed oneDNN makes x·Wᵀ with pixels
    first (1.03–1.12 of its time). Until 2026-12-04 BLAS made it, the tile's pixels split into
    one part per thread; oneDNN takes 0.76–0.87 of that time at (rows × d) → 2a of 16,384 ×
    64 → 128, 16,384 × 112 → 192, 8,192 × 176 → 352 and 8,192 × 256 → 512 (2 threads, AMD
    EPYC). It keeps no packed copy of an ordinary tensor from one call to the next: a tile
    reused in place gives its new values (`tests/test_kv_stats.py` checks it).
    """
    b, n, d = x.shape
    op = mlp.onednn_linear()
    if op is None or not can_run(x, weight):  # e.g. a FLOP counter, which must see the product
        kv = torch.bmm(weight.expand(b, -1, d), x.transpose(1, 2))
    else:
        w = weight.contiguous()
        images = [op(w, image.contiguous(), None, "none", [], "") for image in x]
        kv = images[0][None] if b == 1 else torch.stack(images)  # no copy for the usual single image
    return kv.view(b, 2, heads, -1, n)


def head_sums(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, heads: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per head, over the pixels of x (B, N, d), with [k̃; ṽ] = x·weightᵀ + bias split into heads
    (2 × heads rows of dh) and r the inverse RMS of each pixel's head row (layer norm's eps):
    Σ r_k r_v k̃ᵀṽ (B, heads, dh, dh), Σ r_k k̃ and Σ r_v ṽ (B, heads, dh). CPU, float32, no
    autograd (the caller checks `loop_pool.can_run`).
    """
    b = x.shape[0]
    dh = weight.shape[0] // 2 // heads
    kv = product(x, weight, heads)
    dhp = padded(dh)
    s = np.empty((b, heads, dhp, dhp), np.float32)
    ks, vs = np.empty((b, heads, dh), np.float32), np.empty((b, heads, dh), np.float32)
    args = [kv.numpy(), bias.detach().reshape(2, heads, dh).contiguous().numpy(), s, ks, vs]
    # One (image, head) per block on torch's OpenMP threads; without them on the calling thread
    # alone: threads of our own competed with torch's spinning workers.
    run_blocks(_kernel(), b * heads, args, 1, pool=False)
    return torch.from_numpy(s)[..., :dh, :dh], torch.from_numpy(ks), torch.from_numpy(vs)
