"""SSRNO: SRNO with continuous widths (Integral Neural Network style), sized per layer by ACRE.

One set of full-width weights; a tier is a per-layer width choice read off those weights by cubic
resampling along the channel axes (`widths.narrow`, mode "integral"): the inner width of every
encoder ResBlock and every decoder group. ACRE picks the widths: for each group the smallest
rank whose singular values hold a fraction ε of the energy of every matrix in the group. The
knob is the pair (ε_encoder, ε_decoder), as in the paper's named tiers: lower ε, fewer MACs.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

import torch

from models.galerkin import DecoderWidths, GalerkinDecoder, GalerkinSR
from models.registry import register
from models.tiers import Tier

WIDTH_STEP = 16  # every decoder group's width is a multiple of this (heads = 16 for attention)
ENCODER_STEP = 8  # encoder ResBlock inner widths are multiples of this


@dataclass(frozen=True)
class SSRNOWidths:
    """The SSRNO knob once resolved: inner width per encoder block and the decoder's group widths."""

    encoder: tuple[int, ...]
    decoder: DecoderWidths


def spectra(matrices: torch.Tensor) -> torch.Tensor:
    """Singular values (float64, largest first) of a matrix or of each matrix in a batch."""
    return torch.linalg.svdvals(matrices.detach().double().cpu())


def energy_rank_of(s: torch.Tensor, eps: float) -> float:
    """Smallest k/len(s) whose top-k singular values hold more than `eps` of Σσ² (1 when eps ≥ 1).

    For a batch of spectra, the smallest such fraction over the batch.
    """
    if eps >= 1.0:
        return 1.0
    energy = torch.cumsum(s**2, -1) / (s**2).sum(-1, keepdim=True)
    k = int((energy <= eps).sum(-1).min().item()) + 1
    return min(1.0, k / s.shape[-1])


def round_width(full: int, rate: float, min_rate: float, step: int = WIDTH_STEP) -> int:
    """rate·full rounded up to `step`, within [min_rate·full, full]."""
    rate = max(rate, min_rate)
    steps = -(-round(rate * full * 1e6) // (step * 10**6))
    return int(min(full, max(step, steps * step)))


@dataclass(frozen=True)
class Spectra:
    """Singular values of every weight ACRE looks at, computed once per set of weights.

    They do not depend on ε, so every tier's widths come from one SVD pass.
    encoder: per ResBlock, the spectra of every kernel tap of conv1 and conv2 (taps, channels).
    decoder: per block, the spectra of q/k/v (3, w), ffn1, ffn2 and the core projection.
    """

    encoder: tuple[torch.Tensor, ...]
    decoder: tuple[dict[str, torch.Tensor], ...]

    @classmethod
    def of(cls, encoder, dec: GalerkinDecoder) -> Spectra:
        def taps(w: torch.Tensor) -> torch.Tensor:
            return w.permute(2, 3, 0, 1).reshape(-1, w.shape[0], w.shape[1])

        enc = tuple(
            spectra(torch.cat([taps(block.conv1.weight), taps(block.conv2.weight)])) for block in encoder.body
        )
        w = dec.width
        blocks = tuple(
            {
                "qkv": spectra(dec.qkv[i].weight.reshape(3, w, w)),
                "ffn1": spectra(dec.ffn1[i].weight),
                "ffn2": spectra(dec.ffn2[i].weight),
                "core": spectra(dec.core[i].weight),
            }
            for i in range(dec.blocks)
        )
        return cls(enc, blocks)


def encoder_widths(spec: Spectra, channels: int, eps: float, min_rate: float) -> tuple[int, ...]:
    """Per-ResBlock inner widths: the energy rank over every kernel tap of conv1 and conv2."""
    return tuple(round_width(channels, energy_rank_of(s, eps), min_rate, ENCODER_STEP) for s in spec.encoder)


def acre_widths(spec: Spectra, dec: GalerkinDecoder, eps: float, min_rate: float) -> DecoderWidths:
    """Per-group widths from the SVD energy of the full-width weights (ACRE)."""
    attn_rates, ffn_rates, trunk_rates = [], [], []
    for b in spec.decoder:
        attn_rates.append(energy_rank_of(b["qkv"], eps))
        ffn_rates.append(min(energy_rank_of(b["ffn1"], eps), energy_rank_of(b["ffn2"], eps)))
        trunk_rates += [energy_rank_of(b["core"], eps), energy_rank_of(b["ffn2"], eps)]
    return DecoderWidths(
        trunk=round_width(dec.width, min(trunk_rates), min_rate),
        attn=tuple(round_width(dec.width, r, min_rate) for r in attn_rates),
        ffn=tuple(round_width(dec.ffn_width, r, min_rate) for r in ffn_rates),
    )


@register("ssrno")
class SSRNO(GalerkinSR):
    """EDSR-baseline + integral Galerkin decoder; tiers are ACRE thresholds ε."""

    width_mode = "integral"
    # (name, ε_encoder, ε_decoder), cheapest first; ε = 1 keeps every channel.
    TIER_EPS = (("XS", 0.8, 0.6), ("S", 0.9, 0.8), ("M", 0.95, 0.9), ("L", 0.99, 0.97), ("X", 1.0, 1.0))

    def __init__(self, min_rate: float = 0.25, **kw: Any) -> None:
        super().__init__(**kw)
        self.min_rate = min_rate

    def encoder_inner(self, knob: SSRNOWidths) -> tuple[int, ...]:
        return knob.encoder

    def decoder_widths(self, knob: SSRNOWidths) -> DecoderWidths:
        return knob.decoder

    def tiers(self) -> list[Tier]:
        return self.memo("tiers", self._make_tiers, differentiable=False)

    def _make_tiers(self) -> list[Tier]:
        tiers = []
        with torch.no_grad():
            spec = Spectra.of(self.encoder, self.decoder)
        for index, (name, eps_enc, eps_dec) in enumerate(self.TIER_EPS):
            dec = acre_widths(spec, self.decoder, eps_dec, self.min_rate)
            widths = SSRNOWidths(encoder_widths(spec, self.encoder.channels, eps_enc, self.min_rate), dec)
            label = (
                f"eps={eps_enc:g}/{eps_dec:g} encoder={sum(widths.encoder)} trunk={dec.trunk} "
                f"attn={'/'.join(map(str, dec.attn))} ffn={'/'.join(map(str, dec.ffn))}"
            )
            tiers.append(Tier(name, index, widths, label, self.params_used(widths)))
        return tiers

    def sample_training_knob(self, scale: float, rng: random.Random) -> SSRNOWidths:
        """Widths for one training step, INN-style with the sandwich rule.

        A quarter of the steps train the full width, a third train the current widths of one of
        the narrower tiers (ACRE's choice moves with the weights, so it is read afresh), and the
        rest random widths per group. Random widths alone rarely hit the tiers' exact widths,
        which left a richer tier below a cheaper one.
        """
        full = self.decoder.full_widths()
        draw = rng.random()
        if draw < 0.25:
            return SSRNOWidths(self.encoder.full_inner(), full)
        if draw < 0.6:
            return rng.choice(self.tiers()[:-1]).knob

        def pick(n: int) -> int:
            low = round_width(n, self.min_rate, self.min_rate)
            return rng.randrange(low, n + 1, WIDTH_STEP)

        c = self.encoder.channels
        low = round_width(c, self.min_rate, self.min_rate, ENCODER_STEP)
        blocks = self.decoder.blocks
        return SSRNOWidths(
            encoder=tuple(rng.randrange(low, c + 1, ENCODER_STEP) for _ in self.encoder.body),
            decoder=DecoderWidths(
                trunk=pick(full.trunk),
                attn=tuple(pick(full.trunk) for _ in range(blocks)),
                ffn=tuple(pick(self.decoder.ffn_width) for _ in range(blocks)),
            ),
        )
