"""Helpers shared by the models tests."""

from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode


def counting() -> FlopCounterMode:
    """A FLOP counter that also counts in-place addmm_ (decoders accumulate into gathered rows),
    which torch's counter leaves out."""

    def addmm_flops(acc_shape, a_shape, b_shape, *_, **__) -> int:
        return 2 * a_shape[0] * a_shape[1] * b_shape[1]

    return FlopCounterMode(display=False, custom_mapping={torch.ops.aten.addmm_: addmm_flops})
