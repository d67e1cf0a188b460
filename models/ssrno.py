"""SSRNO: SRNO whose decoder widths are continuous (Integral Neural Network style), sized by ACRE.

One set of full-width weights; a tier is a per-layer width choice read off those weights by cubic
resampling along the channel axes (`widths.narrow`, mode "integral"). ACRE picks the widths: for
each width group the smallest rank whose singular values hold a fraction ε of the energy of every
matrix in the group. The knob is ε: lower ε, narrower layers, fewer MACs.
"""

from __future__ import annotations

import random
from typing import Any

import torch

from models.galerkin import DecoderWidths, GalerkinDecoder, GalerkinSR
from models.registry import register
from models.tiers import Tier

WIDTH_STEP = 16  # every group's width is a multiple of this (heads = 16 for attention)


def energy_rank(matrix: torch.Tensor, eps: float) -> float:
    """Smallest k/min(m, n) whose top-k singular values hold more than `eps` of Σσ² (1 when eps ≥ 1)."""
    if eps >= 1.0:
        return 1.0
    s = torch.linalg.svdvals(matrix.detach().double().cpu())
    energy = torch.cumsum(s**2, 0) / (s**2).sum()
    k = int((energy <= eps).sum().item()) + 1
    return min(1.0, k / min(matrix.shape))


def round_width(full: int, rate: float, min_rate: float) -> int:
    """rate·full rounded up to the width step, within [min_rate·full, full]."""
    rate = max(rate, min_rate)
    steps = -(-round(rate * full * 1e6) // (WIDTH_STEP * 10**6))
    return int(min(full, max(WIDTH_STEP, steps * WIDTH_STEP)))


def acre_widths(dec: GalerkinDecoder, eps: float, min_rate: float) -> DecoderWidths:
    """Per-group widths from the SVD energy of the full-width weights (ACRE)."""
    w = dec.width
    attn_rates, ffn_rates, trunk_rates = [], [], []
    for i in range(dec.blocks):
        q, k, v = dec.qkv[i].weight.reshape(3, w, w)
        attn_rates.append(min(energy_rank(m, eps) for m in (q, k, v)))
        ffn_rates.append(min(energy_rank(dec.ffn1[i].weight, eps), energy_rank(dec.ffn2[i].weight, eps)))
        trunk_rates += [energy_rank(dec.core[i].weight, eps), energy_rank(dec.ffn2[i].weight, eps)]
    return DecoderWidths(
        trunk=round_width(w, min(trunk_rates), min_rate),
        attn=tuple(round_width(w, r, min_rate) for r in attn_rates),
        ffn=tuple(round_width(dec.ffn_width, r, min_rate) for r in ffn_rates),
    )


@register("ssrno")
class SSRNO(GalerkinSR):
    """EDSR-baseline + integral Galerkin decoder; tiers are ACRE thresholds ε."""

    width_mode = "integral"
    TIER_EPS = (("XS", 0.6), ("S", 0.8), ("M", 0.9), ("L", 0.97), ("X", 1.0))

    def __init__(self, min_rate: float = 0.25, **kw: Any) -> None:
        super().__init__(**kw)
        self.min_rate = min_rate

    def decoder_widths(self, knob: DecoderWidths) -> DecoderWidths:
        return knob

    def tiers(self) -> list[Tier]:
        return self.memo("tiers", self._make_tiers, differentiable=False)

    def _make_tiers(self) -> list[Tier]:
        tiers = []
        for index, (name, eps) in enumerate(self.TIER_EPS):
            with torch.no_grad():
                widths = acre_widths(self.decoder, eps, self.min_rate)
            label = (
                f"eps={eps:g} trunk={widths.trunk} attn={'/'.join(map(str, widths.attn))} "
                f"ffn={'/'.join(map(str, widths.ffn))}"
            )
            tiers.append(Tier(name, index, widths, label, self.params_used(widths)))
        return tiers

    def sample_training_knob(self, scale: float, rng: random.Random) -> DecoderWidths:
        """Random widths for every group (full width a quarter of the time) — INN-style training."""
        full = self.decoder.full_widths()
        if rng.random() < 0.25:
            return full

        def pick(n: int) -> int:
            low = round_width(n, self.min_rate, self.min_rate)
            return rng.randrange(low, n + 1, WIDTH_STEP)

        blocks = self.decoder.blocks
        return DecoderWidths(
            trunk=pick(full.trunk),
            attn=tuple(pick(full.trunk) for _ in range(blocks)),
            ffn=tuple(pick(self.decoder.ffn_width) for _ in range(blocks)),
        )
