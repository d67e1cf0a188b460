"""AnySR: SRNO rebuilt as weight-sharing subnets chosen by scale group, with feature interweaving.

A subnet of width w keeps the first ⌊64·w⌋ inner channels of every encoder ResBlock (whose
scale-aware channel attention sees the scale pair interwoven into its pooled features) and the
first ⌊256·w⌋ channels (rounded to the 16 heads) of every decoder group. The AnySR paper slices
only the encoder; at ×2–×4 the decoder is most of the cost, so we slice it too, which is what
lets the cheap subnets actually save time.
"""

from __future__ import annotations

import random
from typing import Any

import torch

from models.galerkin import DecoderWidths, GalerkinSR
from models.registry import register
from models.tiers import Tier

SUBNET_WIDTHS = (0.5, 0.7, 0.9, 1.0)
# Upper end (inclusive, on the 0.1 grid) of each scale group: S1 1.1–1.7 … S4 3.3–4.0.
GROUP_UPPER = (1.7, 2.5, 3.2, 4.0)


def width_for_scale(scale: float) -> float:
    """The subnet width of the scale group that holds `scale` (the full net beyond ×4)."""
    s = round(scale, 1)
    for upper, width in zip(GROUP_UPPER, SUBNET_WIDTHS, strict=True):
        if s <= upper:
            return width
    return 1.0


@register("anysr")
class AnySR(GalerkinSR):
    """Scale-aware sliceable EDSR + sliceable Galerkin decoder; the knob is the subnet width."""

    width_mode = "slice"
    RESET_TO_FULL = 0.6  # Algorithm 1: probability of training the full net instead of the group's
    # Ours: share of steps that train a narrow subnet at whatever scale the batch has. Algorithm 1
    # trains w0.5 only at ×1.1–1.7, yet the knob offers any width at any scale on request (the
    # controller's cheapest tier under load), where it had never been trained. At 0.15, batch-8
    # runs improved w1 at w0.5's expense (models/README.md, training history).
    ANY_WIDTH_SHARE = 0.3

    def __init__(self, **kw: Any) -> None:
        super().__init__(scale_aware=True, **kw)

    def encoder_inner(self, knob: float) -> tuple[int, ...]:
        return self.encoder.uniform_inner(knob)

    def decoder_widths(self, knob: float) -> DecoderWidths:
        heads = self.decoder.heads

        def cut(n: int) -> int:
            return max(heads, int(n * knob + 1e-6) // heads * heads)

        d = self.decoder
        return DecoderWidths(cut(d.width), (cut(d.width),) * d.blocks, (cut(d.ffn_width),) * d.blocks)

    def encoder_scale(self, lr: torch.Tensor, out_size: tuple[int, int]) -> torch.Tensor:
        s = torch.tensor([out_size[0] / lr.shape[2], out_size[1] / lr.shape[3]], device=lr.device)
        return s.clamp(1.0, 4.0).expand(lr.shape[0], 2)

    def tiers(self) -> list[Tier]:
        return [
            Tier(f"w{w:g}", i, w, f"width={w:g}", self.params_used(w)) for i, w in enumerate(SUBNET_WIDTHS)
        ]

    def default_tier(self, scale: tuple[float, float]) -> Tier:
        width = width_for_scale(max(scale))
        return next(t for t in self.tiers() if t.knob == width)

    def sample_training_knob(self, scale: float, rng: random.Random) -> float:
        draw = rng.random()
        if draw < self.RESET_TO_FULL:
            return 1.0
        if draw < self.RESET_TO_FULL + self.ANY_WIDTH_SHARE:
            return rng.choice(SUBNET_WIDTHS[:-1])
        return width_for_scale(scale)
