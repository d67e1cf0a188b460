"""The decoders' RGB layer, x·Wᵀ + b with only a few output channels, on CPU as one compiled loop (numba).

BLAS runs a (rows × C)·(C × 3) product far below its speed, and how far depends on the host and
the layout: on a Xeon (AVX-512) the transposed form (3 × C)·(C × rows) took 0.72–0.83 of the
plain one's time, while on an AMD EPYC (Zen 4) it ran at 2–6 GMAC/s against 11–21 for the plain
`F.linear`, and SSRNO XS's head spent 23 of its 44 ms in it (×2, 128² input, 2 threads). The
loop reads each row once and takes its few dot products while it is in the L1 cache: 0.4 ms
per 16,384 × 256 tile on that host, against 1.1 (`F.linear`) and 2.3–6.6 (transposed), so the
layer costs about what reading its input costs, on any host.

CPU only, under `loop_pool.can_run` (the caller checks it); `tests/test_thin_product.py` checks
it against torch's product.
"""

from __future__ import annotations

from functools import cache

import numpy as np
import torch

from models.loop_pool import arrays, numba_for_host, run_blocks

ROW_BLOCK = 1024  # rows per block handed to a thread (about 0.03 ms of work at C = 256)


@cache
def _kernel():
    """The loop, compiled on first use (a service's warm-up decodes a small image)."""
    numba = numba_for_host()
    types = numba.types
    c1, c2 = (types.Array(types.float32, n, "C") for n in (1, 2))

    @numba.njit(
        types.void(c2, c2, c1, c2, types.int64, types.int64), nogil=True, fastmath=True, error_model="numpy"
    )
    def rows(x, weight, bias, out, start, stop):  # pragma: no cover
        """out[n] = weight·x[n] + bias for rows n in [start, stop)."""
        channels = weight.shape[0]
        for n in range(start, stop):
            row = x[n]
            for j in range(channels):
                w = weight[j]
                acc = np.float32(0.0)
                for k in range(row.shape[0]):
                    acc += row[k] * w[k]
                out[n, j] = acc + bias[j]

    return rows


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """x·weightᵀ + bias for x (..., C), weight (O, C), bias (O): (..., O). CPU, float32, no autograd.

    The shapes are checked here because the compiled loop indexes without bounds checks: a
    mismatch would read past the weight where torch's product raises.
    """
    if weight.dim() != 2 or x.shape[-1] != weight.shape[1] or bias.shape != weight.shape[:1]:
        shapes = f"x {tuple(x.shape)}, weight {tuple(weight.shape)}, bias {tuple(bias.shape)}"
        raise ValueError(f"{shapes} do not match")
    flat = x.reshape(-1, x.shape[-1])
    out = torch.empty(flat.shape[0], weight.shape[0])
    run_blocks(_kernel(), flat.shape[0], [*arrays(flat, weight, bias), out.numpy()], ROW_BLOCK)
    return out.view(*x.shape[:-1], weight.shape[0])
