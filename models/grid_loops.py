"""What the compiled loops over an output grid share (`models.lift_grid`, `models.pair_kernel`).

Both find a query's four LR neighbours and offsets from per-axis tables (`GridAxes`) and weigh
the neighbours by the local ensemble; the weights are written once here, as a numba function
that each loop inlines, so that the two cannot drift apart from each other or from the torch
reference (`implicit.neighbour_grid`).
"""

from __future__ import annotations

from functools import cache

import numpy as np

from models.loop_pool import numba_for_host


@cache
def ensemble_weights():
    """`weights(y0, y1, x0, x1)`: a grid query's four neighbour weights from its row offsets to
    the rows above and below (y0, y1) and its column offsets to the columns left and right
    (x0, x1). Each neighbour's (above left, above right, below left, below right) is the area
    opposite it over their total, as in `neighbour_grid`; inlined where it is called."""
    numba = numba_for_host()

    @numba.njit(inline="always", fastmath=True)
    def weights(y0, y1, x0, x1):  # pragma: no cover
        eps = np.float32(1e-9)
        a0, a1 = abs(y0 * x0) + eps, abs(y0 * x1) + eps
        a2, a3 = abs(y1 * x0) + eps, abs(y1 * x1) + eps
        total = a0 + a1 + a2 + a3
        return a3 / total, a2 / total, a1 / total, a0 / total

    return weights
