"""An MLP decoder run on (query, neighbour) pairs whose first layer was taken once per LR pixel.

Per pair the decoder gathers its pixel's row of the first layer's feature product (the `table`),
adds the product of the few offset/cell columns, and runs the remaining layers. A deep decoder's
remaining layers are wide matrix products and run well as torch ops, a tile of pairs at a time.
A two-layer decoder (MoEISR's lightest expert) has none: gather, 4-column product, ReLU and the
3-wide output product are four passes over a (pairs × hidden) tensor, each bound by memory, which
kept its tier at 0.13–0.17 of the matmul peak (bench 24). On CPU it therefore runs as one compiled
loop over pairs (numba) in which the hidden vector never leaves registers: the same products, in
the same order per pair, at several times the speed.

The torch path stays the reference: it runs on CUDA, with autograd, and under any torch dispatch
mode (the FLOP counter in the tests, tracers), which must see every product the decoder does.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from functools import cache
from itertools import pairwise

import numpy as np
import torch
from torch.utils._python_dispatch import is_in_torch_dispatch_mode

from models.mlp import MLP

# (query, neighbour) pairs per tile of a deep decoder's layers: its 256-wide hidden activations
# (4 MiB) stay in cache from one layer to the next.
PAIR_TILE = 4096
# Pairs below which splitting the fused loop over threads costs more than it saves.
MIN_PAIRS_PER_THREAD = 8192
# The fused loop's fixed shape: 2 offset + 2 cell columns in, RGB out.
POS_COLUMNS, OUT_CHANNELS = 4, 3


@cache
def _compiled():
    """The fused loop, compiled on first use (about half a second) rather than at import."""
    from numba import njit

    @njit(nogil=True, fastmath=True, cache=False)
    def two_layer(table, rows, pos, pos_weight, out_weight, out_bias, out, start, stop):  # pragma: no cover
        hidden = table.shape[1]
        zero = np.float32(0.0)
        for i in range(start, stop):
            r = rows[i]
            p0, p1, p2, p3 = pos[i, 0], pos[i, 1], pos[i, 2], pos[i, 3]
            o0, o1, o2 = zero, zero, zero
            for k in range(hidden):
                v = table[r, k] + p0 * pos_weight[0, k] + p1 * pos_weight[1, k]
                v = max(v + p2 * pos_weight[2, k] + p3 * pos_weight[3, k], zero)
                o0 += v * out_weight[0, k]
                o1 += v * out_weight[1, k]
                o2 += v * out_weight[2, k]
            out[i, 0] = o0 + out_bias[0]
            out[i, 1] = o1 + out_bias[1]
            out[i, 2] = o2 + out_bias[2]

    return two_layer


@cache
def _pool() -> ThreadPoolExecutor:
    """Worker threads for the fused loop, which releases the GIL; shared by concurrent requests."""
    return ThreadPoolExecutor(max_workers=os.cpu_count() or 1, thread_name_prefix="pair-kernel")


def fusable(decoder: MLP, table: torch.Tensor, pos: torch.Tensor) -> bool:
    """Whether the fused loop can stand in for the torch ops without anyone missing them."""
    tensors = (table, pos, *decoder.parameters())
    return (
        len(decoder.net) == 3  # Linear, ReLU, Linear
        and isinstance(decoder.net[1], torch.nn.ReLU)
        and pos.shape[1] == POS_COLUMNS
        and decoder.net[2].out_features == OUT_CHANNELS
        and all(t.device.type == "cpu" and t.dtype == torch.float32 for t in tensors)
        and not (torch.is_grad_enabled() and any(t.requires_grad for t in tensors))
        and not is_in_torch_dispatch_mode()
    )


def decode_pairs(
    decoder: MLP, table: torch.Tensor, rows: torch.Tensor, pos: torch.Tensor, pos_weight: torch.Tensor
) -> torch.Tensor:
    """`decoder` on each pair (n, out): its first layer is `table[rows] + pos @ pos_weight.T`.

    table: (P, hidden) per-pixel feature product with the first layer's bias; rows: (n,) index into
    it; pos: (n, k) offset/cell columns; pos_weight: (hidden, k) the first layer's weights on them.
    """
    if fusable(decoder, table, pos):
        return _fused(decoder, table, rows, pos, pos_weight)
    y = pos.new_empty(pos.shape[0], decoder.net[-1].out_features)
    pos_t = pos_weight.t()
    for s in range(0, pos.shape[0], PAIR_TILE):  # a tile's hidden activations stay in cache
        at = slice(s, s + PAIR_TILE)
        # The gathered rows are the output buffer: the offset/cell product adds into them.
        hidden = table.index_select(0, rows[at]).addmm_(pos[at], pos_t)
        y[at] = decoder.after_first(hidden)
    return y


def _fused(
    decoder: MLP, table: torch.Tensor, rows: torch.Tensor, pos: torch.Tensor, pos_weight: torch.Tensor
) -> torch.Tensor:
    """The fused loop over the pairs, split into contiguous runs over torch's thread count."""
    kernel = _compiled()
    last = decoder.net[2]
    n = rows.shape[0]
    out = np.empty((n, OUT_CHANNELS), np.float32)
    args = (
        table.detach().contiguous().numpy(),
        rows.contiguous().numpy(),
        pos.detach().contiguous().numpy(),
        pos_weight.detach().t().contiguous().numpy(),
        last.weight.detach().contiguous().numpy(),
        last.bias.detach().contiguous().numpy(),
        out,
    )
    parts = max(1, min(torch.get_num_threads(), n // MIN_PAIRS_PER_THREAD))
    bounds = [n * i // parts for i in range(parts + 1)]
    if parts == 1:
        kernel(*args, 0, n)
    else:
        runs = [_pool().submit(kernel, *args, a, b) for a, b in pairwise(bounds)]
        for run in runs:
            run.result()
    return torch.from_numpy(out)
