"""SRNO's lift over a span of row-major output pixels on CPU as one compiled loop (numba).

The lift of a query is Σ_k w_k·T[pixel_k, k] + [row offset above, column offset left, row
below, column right, 1]·P: four rows of the per-pixel table T of the neighbour-feature products
(`GalerkinDecoder.lift_table`), weighted by the local ensemble, plus the product of the query's
offsets with the remaining lift weights, the last column the image's cell and bias
(`GalerkinDecoder.lift_position`). As torch ops (`GalerkinDecoder.lift_queries`) that is per
query coordinates, the four neighbours, offsets and weights, row indices into T, a weighted
gather (`embedding_bag`), the position columns and their product: passes over per-query tensors
that at SSRNO's XS tier took 4.8 of the lift's 6.4 ms, the table's product the rest (×2, 128²
input, 2 threads). Here the neighbours, offsets and weights come from per-axis tables
(`GridAxes`, H + W entries) and each lifted vector is written once: 1.5 ms for the same part,
the products the same.

CPU only, under `loop_pool.can_run` (the caller checks it); `tests/test_lift_grid.py` checks it
against the torch ops.
"""

from __future__ import annotations

from functools import cache

import torch

from models.grid_loops import ensemble_weights
from models.implicit import GridAxes
from models.loop_pool import arrays, numba_for_host, run_blocks

# Queries per block handed to a thread (0.1–0.3 ms of work at d = 64…256).
QUERY_BLOCK = 4096


@cache
def _kernel():
    """The loop, compiled on first use (a service's warm-up decodes a small image)."""
    numba = numba_for_host()
    njit, types = numba.njit, numba.types
    grid_weights = ensemble_weights()  # a query's neighbour weights

    f4, i8 = types.float32, types.int64
    c2, c3 = (types.Array(f4, n, "C") for n in (2, 3))
    ax_i = types.Array(i8, 2, "C")

    @njit(
        types.void(c2, ax_i, c2, ax_i, c2, c2, c3, i8, i8, i8, i8, i8, i8, i8),
        nogil=True,
        fastmath=True,
        error_model="numpy",
    )
    def lift(
        table, iy, ry, ix, rx, pos, out, first, count, lo, band, lr_width, start, stop
    ):  # pragma: no cover
        """out[b, j] for items [start, stop) = (b, j) of count pixels per image from `first`."""
        d, width = out.shape[2], ix.shape[1]
        b, j = start // count, start % count
        y, x = (first + j) // width, (first + j) % width
        for _ in range(start, stop):
            t, u, left, right = iy[0, y], iy[1, y], ix[0, x], ix[1, x]  # LR rows and columns
            top = (b * band + (t - lo) * lr_width) * 4
            bottom = (b * band + (u - lo) * lr_width) * 4
            # neighbour k's row of the table is (pixel·4 + k): its slot of the lift weights
            r0, r1 = top + left * 4, top + right * 4 + 1
            r2, r3 = bottom + left * 4 + 2, bottom + right * 4 + 3
            y0, y1, x0, x1 = ry[0, y], ry[1, y], rx[0, x], rx[1, x]
            w0, w1, w2, w3 = grid_weights(y0, y1, x0, x1)
            for k in range(d):  # indexed in full: a sliced row per item costs reference counting
                out[b, j, k] = (
                    w0 * table[r0, k]
                    + w1 * table[r1, k]
                    + w2 * table[r2, k]
                    + w3 * table[r3, k]
                    + y0 * pos[0, k]
                    + x0 * pos[1, k]
                    + y1 * pos[2, k]
                    + x1 * pos[3, k]
                    + pos[4, k]
                )
            # The next item, without two integer divisions per item.
            j, x = j + 1, x + 1
            if x == width:
                y, x = y + 1, 0
            if j == count:
                b, j = b + 1, 0
                y, x = first // width, first % width

    return lift


def lift_span(
    table: torch.Tensor,
    band: tuple[int, int],
    axes: GridAxes,
    position: torch.Tensor,
    batch: int,
    lr_width: int,
    span: tuple[int, int],
) -> torch.Tensor:
    """Lifted queries (B, stop − start, d) of the row-major output pixels span = [start, stop).

    table: (B·P·4, d) the neighbour-feature products of LR rows band = (lo, hi), image after
    image (P = (hi − lo)·lr_width pixels each), row (image, pixel, neighbour slot); position:
    (d, 5) the lift's weights on [row offset above, column offset left, row below, column right,
    1] (`GalerkinDecoder.lift_position`).
    """
    start, stop = span
    (lo, hi), count = band, stop - start
    # From torch's allocator: numpy advises huge pages for large arrays, and where the kernel
    # compacts memory for them on fault (defrag=madvise) SSRNO X ×4 took 1.11× the time.
    out = torch.empty(batch, count, table.shape[1])
    tables = arrays(table, axes.rows, axes.row_rel, axes.cols, axes.col_rel, position.t())
    args = [*tables, out.numpy(), start, count, lo, (hi - lo) * lr_width, lr_width]
    run_blocks(_kernel(), batch * count, args, QUERY_BLOCK)
    return out
