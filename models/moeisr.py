"""MoEISR: an implicit decoder split into experts of different depth, chosen per LR pixel by a mapper.

Experts are LIIF-style MLPs of 2–5 layers over (neighbour feature, offset, cell); every output
pixel is the bilinear (local-ensemble) mix of its four neighbours' predictions, each made by the
expert the mapper picked for that neighbour's LR pixel. Training routes with straight-through
Gumbel-softmax; inference routes by argmax.

The expert budget is our knob (the paper has none): subtracting λ·cost from the mapper's logits
moves pixels to lighter experts monotonically in λ, and per image we take the smallest λ whose
routing keeps the mean expert cost (over the output pixels' actual use of each LR pixel) within
`budget` × the heaviest expert's cost. Lower budget, never more MACs. A budget below the lightest
expert's cost (the cheapest tier, b0) gives every pixel the lightest expert, so the mapper is not
run at all.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from models.base import DEFAULT_MAX_QUERIES, ScalableSR, model_range
from models.encoder import EDSREncoder
from models.implicit import (
    GridAxes,
    axis_neighbours,
    band_rows,
    chunked_band_pixels,
    gather_pixels,
    mix_neighbours,
    neighbour_grid,
    relative_cell,
    spans,
)
from models.mlp import MLP
from models.pair_kernel import decode_grid, decode_pairs, decode_queries, fusable, query_macs
from models.registry import register
from models.tiers import Tier

BALANCE_WEIGHT = 1 / 3000  # the paper's β/α
CELL_COLUMNS = 2  # an expert's input: [feature, offset (2), cell (2)]
BISECTION_STEPS = 24  # λ to 2^-24 of its range: far finer than any two experts' logit gap


@dataclass(frozen=True)
class TrainRouting:
    """Training knob: Gumbel routing with the logits biased by −bias·cost (budget augmentation),
    or, with `lightest`, the cheapest tier's routing (the lightest expert on every pixel)."""

    bias: float = 0.0
    lightest: bool = False


@dataclass(frozen=True)
class ExpertColumns:
    """Where an expert's input columns lie: [feature, offset (2), cell (2)]."""

    feature: slice
    offset: slice
    cell: slice


@dataclass
class MoEState:
    feat: torch.Tensor  # (B, C, h, w)
    route: torch.Tensor  # (B, J, h*w) one-hot (straight-through in training)
    logits: torch.Tensor | None  # (B, J, h, w); None when the budget skipped the mapper
    pick: torch.Tensor | None = None  # (B, h*w) expert index at inference


def axis_usage(n: int, out: int, device) -> torch.Tensor:
    """How many (output pixel, ensemble neighbour) pairs use each of the n LR positions on one axis."""
    index, _ = axis_neighbours(out, n, device)
    return torch.bincount(index.flatten(), minlength=n).float()


def budget_routing(
    logits: torch.Tensor, cost: torch.Tensor, usage: torch.Tensor, budget: float
) -> torch.Tensor:
    """Expert per LR pixel (B, h*w): argmax of logits − λ·cost with the smallest λ meeting the budget."""
    # Pixel-major (B, P, J): an argmax across the J experts of each pixel is then a reduction
    # over contiguous rows, an order of magnitude faster on CPU than across the J rows of a
    # (J, P) tensor, and the bisection below takes 25 more of them per image (87–91 → 6–7 ms at 128²).
    flat = logits.detach().flatten(2).transpose(1, 2).contiguous()
    choice = flat.argmax(2)
    if budget >= 1.0:
        return choice
    weight = usage / usage.sum()
    out = []
    for b in range(flat.shape[0]):
        lg = flat[b]

        def mean_cost(lam: float, lg=lg) -> tuple[float, torch.Tensor]:
            pick = (lg - lam * cost).argmax(1)
            return float((cost[pick] * weight).sum()), pick

        pick = choice[b]  # the routing at λ = 0, already computed
        if float((cost[pick] * weight).sum()) > budget:
            gaps = cost[:, None] - cost[None, :]
            hi = float((lg.max() - lg.min()) / gaps[gaps > 0].min()) + 1.0
            lo = 0.0
            for _ in range(BISECTION_STEPS):
                mid = (lo + hi) / 2
                if mean_cost(mid)[0] <= budget:
                    hi = mid
                else:
                    lo = mid
            pick = mean_cost(hi)[1]
        out.append(pick)
    return torch.stack(out)


def expert_groups(pick: torch.Tensor, experts: int) -> Iterator[tuple[int, torch.Tensor | None]]:
    """Each expert that `pick` uses, with the positions it takes (None when it takes all of them,
    so that callers can use whole tensors instead of copies)."""
    for j in range(experts):
        mask = pick == j
        if mask.all():
            yield j, None
            return
        if mask.any():
            yield j, mask.nonzero().squeeze(1)


@register("moeisr")
class MoEISR(ScalableSR):
    """EDSR-baseline + 5-layer CNN mapper + experts of depth 2/3/4/5; knob = expert budget."""

    DEPTHS = (2, 3, 4, 5)
    TIER_BUDGETS = (("b0", 0.0), ("b25", 0.25), ("b45", 0.45), ("b70", 0.7), ("full", 1.0))
    LIGHTEST_SHARE = 0.3  # of training steps that route every pixel to the lightest expert

    def __init__(self, hidden: int = 256, mapper_width: int = 64, **_: Any) -> None:
        super().__init__()
        self.encoder = EDSREncoder()
        c = self.encoder.channels
        layers: list[nn.Module] = []
        for i in range(4):
            layers += [nn.Conv2d(c if i == 0 else mapper_width, mapper_width, 3, padding=1), nn.ReLU()]
        layers.append(nn.Conv2d(mapper_width, len(self.DEPTHS), 3, padding=1))
        self.mapper = nn.Sequential(*layers)
        self.experts = nn.ModuleList(MLP(c + 4, hidden, 3, depth) for depth in self.DEPTHS)
        self.columns = ExpertColumns(slice(0, c), slice(c, c + 2), slice(c + 2, c + 2 + CELL_COLUMNS))
        costs = torch.tensor([e.macs_per_query for e in self.experts], dtype=torch.float32)
        self.register_buffer("relative_cost", costs / costs.max(), persistent=False)

    # ---- tiers ---------------------------------------------------------------------------------
    def tiers(self) -> list[Tier]:
        return [
            Tier(name, i, budget, f"budget={budget:g}", self.params_used(budget))
            for i, (name, budget) in enumerate(self.TIER_BUDGETS)
        ]

    def sample_training_knob(self, scale: float, rng: random.Random) -> TrainRouting:
        """Sandwich rule over budgets: some steps train the cheapest tier's routing exactly (the
        lightest expert everywhere, which the mapper alone would never give it), the rest route
        by the mapper, half of them with a random bias towards light experts."""
        draw = rng.random()
        if draw < self.LIGHTEST_SHARE:
            return TrainRouting(lightest=True)
        return TrainRouting(bias=rng.uniform(0.0, 3.0) if draw < (1 + self.LIGHTEST_SHARE) / 2 else 0.0)

    # ---- network -------------------------------------------------------------------------------
    def lightest_only(self, knob: Any) -> bool:
        """A budget no routing can meet but the lightest expert everywhere: no mapper needed."""
        if isinstance(knob, TrainRouting):
            return knob.lightest
        return float(knob) <= float(self.relative_cost.min())

    def encode(self, lr: torch.Tensor, knob: Any, out_size: tuple[int, int]) -> MoEState:
        feat = self.encoder(lr)
        j = len(self.experts)
        if self.lightest_only(knob):
            pick = torch.zeros(
                feat.shape[0], feat.shape[2] * feat.shape[3], dtype=torch.long, device=lr.device
            )
            return MoEState(feat, F.one_hot(pick, j).transpose(1, 2).float(), None, pick)
        logits = self.mapper(feat)
        if isinstance(knob, TrainRouting):
            biased = logits - knob.bias * self.relative_cost.view(1, j, 1, 1)
            route = F.gumbel_softmax(biased.flatten(2), tau=1.0, hard=True, dim=1)
        else:
            usage = torch.outer(
                axis_usage(lr.shape[2], out_size[0], lr.device),
                axis_usage(lr.shape[3], out_size[1], lr.device),
            ).flatten()
            pick = budget_routing(logits, self.relative_cost, usage, float(knob))
            route = F.one_hot(pick, j).transpose(1, 2).float()
            return MoEState(feat, route, logits, pick)
        return MoEState(feat, route, logits)

    def decode(self, state: MoEState, coord: torch.Tensor, out_size, knob) -> torch.Tensor:
        """Inference: `decode_routed`. Training: every expert on every pair, mixed by the gates."""
        if not isinstance(knob, TrainRouting):
            return self.decode_routed(state, coord, out_size)
        b, q = coord.shape[:2]
        grid = state.feat.shape[-2:]
        index, rel, weight = neighbour_grid(coord, grid)
        pixels = index.view(b, 4 * q)  # pairs neighbour-major, as in decode_routed
        cell = relative_cell(out_size, grid, b, coord.device)[:, None, :].expand(-1, 4 * q, -1)
        x = torch.cat([gather_pixels(state.feat, pixels), rel.view(b, 4 * q, 2), cell], -1)
        gates = gather_pixels(state.route, pixels)  # (B, 4Q, J)
        # An expert whose gate is a constant zero (lightest-only steps) adds nothing, not even gradient.
        used = [j for j in range(len(self.experts)) if state.route.requires_grad or state.route[:, j].any()]
        y = sum(gates[..., j : j + 1] * self.experts[j](x) for j in used)
        return mix_neighbours(y.view(b, 4, q, 3), weight)

    def decode_routed(self, state: MoEState, coord: torch.Tensor, out_size) -> torch.Tensor:
        """Inference: each (query, neighbour) pair runs only the expert picked for its LR pixel.

        An expert's first layer is linear in [feature, offset, cell] and the feature belongs to
        the LR pixel, so its product is taken once per LR pixel of the queries' band, with that
        pixel's expert, and gathered per pair (LIIF's trick); the cell columns go into its bias
        (`band_table`). Per pair only the 2 offset columns and the deeper layers remain
        (`models.pair_kernel`). Where one expert takes every LR pixel of the image, as at b0,
        each query's four pairs are mixed before that expert's linear output layer
        (`decode_queries`, `query_macs`); otherwise every pair runs its expert to the end
        (`decode_pairs` per expert) and the outputs are mixed. The routing is unchanged.
        """
        assert state.pick is not None
        b, q = coord.shape[:2]
        w = state.feat.shape[-1]
        # (B, 4, Q), (B, 4, Q, 2), (B, 4, Q)
        index, rel, weight = neighbour_grid(coord, state.feat.shape[-2:])
        lo, hi = band_rows(index, w)
        offset = (torch.arange(b, device=coord.device) * (hi - lo) * w)[:, None, None] - lo * w
        rows = index + offset  # (B, 4, Q) into the band's table
        sole = self.sole_expert(state)
        if sole is not None:
            table = self.band_product(state, (lo, hi), sole)
            pos_weight = self.offset_weight(sole)
            bias = self.first_bias(sole, out_size, state.feat.shape[-2:], coord.device)
            return decode_queries(self.experts[sole], table, bias, rows, rel, weight, pos_weight)
        table, band_pick = self.band_table(state, (lo, hi), out_size)
        rows, rel = rows.view(-1), rel.view(-1, 2)
        y = rel.new_empty(rel.shape[0], 3)
        for j, pairs in expert_groups(band_pick[rows], len(self.experts)):
            at_rows, at_rel = (rows, rel) if pairs is None else (rows[pairs], rel[pairs])
            out = decode_pairs(self.experts[j], table, at_rows, at_rel, self.offset_weight(j))
            if pairs is None:
                y = out
            else:
                y[pairs] = out
        return mix_neighbours(y.view(b, 4, q, 3), weight)

    def first(self, j: int) -> nn.Linear:
        """Expert j's first layer, over [feature, offset, cell] (`columns`)."""
        return self.experts[j].net[0]

    def feature_weight(self, j: int) -> torch.Tensor:
        """Expert j's first-layer weights on the LR feature (hidden, C): taken once per LR pixel."""
        return self.first(j).weight[:, self.columns.feature]

    def offset_weight(self, j: int) -> torch.Tensor:
        """Expert j's first-layer weights on the pair's two offset columns (hidden, 2)."""
        return self.first(j).weight[:, self.columns.offset]

    def first_bias(self, j: int, out_size: tuple[int, int], grid: tuple[int, int], device) -> torch.Tensor:
        """Expert j's first-layer bias with the image's cell columns folded in: the cell is the
        same for every pair (two multiply-adds per hidden unit, like any bias not counted)."""
        layer, cell = self.first(j), relative_cell(out_size, grid, 1, device)[0]
        return layer.bias + (layer.weight[:, self.columns.cell] * cell).sum(1)

    @staticmethod
    def band_features(state: MoEState, band: tuple[int, int]) -> torch.Tensor:
        """Features (B·P, C) of the P = (hi − lo)·w LR pixels of rows band = (lo, hi), image after image."""
        (lo, hi), c = band, state.feat.shape[1]
        return state.feat[:, :, lo:hi].flatten(2).transpose(1, 2).reshape(-1, c)

    def band_product(self, state: MoEState, band: tuple[int, int], j: int) -> torch.Tensor:
        """Expert j's first-layer feature product (B·P, hidden) of every LR pixel of rows band,
        without its bias: for one expert on every pixel, whose loops add its bias themselves. A
        bare product writes no copy of the bias into a 16 MiB output first (at 128² × 2 it took
        0.73 of the time)."""
        return F.linear(self.band_features(state, band), self.feature_weight(j))

    def band_table(
        self, state: MoEState, band: tuple[int, int], out_size: tuple[int, int]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """First-layer rows (B·P, hidden) of the LR pixels of rows band = (lo, hi), image after
        image, each with its pixel's expert: its feature product plus that expert's
        `first_bias`. Every pair then adds its row exactly once, so per pair only the two offset
        columns remain of the first layer. Also the band's experts (B·P,)."""
        band_feat, (h, w) = self.band_features(state, band), state.feat.shape[-2:]
        band_pick = state.pick[:, band[0] * w : band[1] * w].reshape(-1)
        table = None  # allocated only where several experts share the band
        for j, rows in expert_groups(band_pick, len(self.experts)):
            weight = self.feature_weight(j)
            j_bias = self.first_bias(j, out_size, (h, w), band_feat.device)
            if rows is None:  # one expert takes the whole band (low budgets): no copies in and out
                table = F.linear(band_feat, weight, j_bias)
            else:
                if table is None:
                    table = band_feat.new_empty(band_feat.shape[0], weight.shape[0])
                table[rows] = F.linear(band_feat[rows], weight, j_bias)
        assert table is not None  # every pixel has an expert
        return table, band_pick

    def decode_image(
        self, state: MoEState, lr: torch.Tensor, size: tuple[int, int], knob: Any, chunk: int
    ) -> torch.Tensor:
        """Where one expert takes every LR pixel (always at b0) and the fused loops can run, each
        chunk of output pixels is finished in one pass of `pair_kernel.decode_grid`, residual
        and upsample included, from per-axis neighbour tables made once per image; otherwise
        the generic chunked decode (`decode_routed` per chunk). Same result to float rounding."""
        sole = self.sole_expert(state)
        if sole is None:
            return super().decode_image(state, lr, size, knob, chunk)
        expert, weight = self.experts[sole], self.offset_weight(sole)
        if not fusable(expert, weight, state.feat, lr):
            return super().decode_image(state, lr, size, knob, chunk)
        (b, _, h, w), (out_h, out_w) = state.feat.shape, size
        axes = GridAxes.of(size, (h, w), lr.device)
        bias = self.first_bias(sole, size, (h, w), lr.device)
        out = torch.empty(b, 3, out_h * out_w, device=lr.device)
        for start, stop in spans(out_h * out_w, chunk):
            band = axes.band(out_w, start, stop)
            table = self.band_product(state, band, sole)
            decode_grid(expert, table, bias, band, axes, lr, weight, out, (start, stop))
        return out.view(b, 3, out_h, out_w)

    @staticmethod
    def sole_expert(state: MoEState) -> int | None:
        """The expert every LR pixel of every image picked, if one did."""
        if state.pick is None:
            return None
        first = int(state.pick.view(-1)[0])
        return first if bool((state.pick == first).all()) else None

    def training_loss(self, lr, coord, out_size, knob, target) -> torch.Tensor:
        """L1 plus the paper's load-balance term on the mapper's soft assignment."""
        from models.implicit import bilinear_at

        state = self.encode(lr, knob, out_size)
        pred = self.decode(state, coord, out_size, knob) + bilinear_at(lr, coord)
        if state.logits is None:  # lightest-only step: no mapper, nothing to balance
            return F.l1_loss(pred, target)
        share = state.logits.softmax(1).mean(dim=(0, 2, 3))
        balance = (share - 1 / len(self.experts)).abs().sum()
        return F.l1_loss(pred, target) + BALANCE_WEIGHT * balance

    # ---- cost ----------------------------------------------------------------------------------
    def _pixel_macs(self, mapper: bool = True) -> int:
        enc = self.encoder.macs_per_pixel()
        if not mapper:
            return enc
        return enc + sum(m.in_channels * m.out_channels * 9 for m in self.mapper if isinstance(m, nn.Conv2d))

    def feature_macs(self) -> int:
        """MACs of an expert's first layer on one LR feature (the same for every expert)."""
        return self.encoder.channels * self.experts[0].net[0].out_features

    def pair_macs(self, expert: MLP) -> int:
        """An expert's MACs per (query, neighbour) pair at inference: its MLP less the first
        layer's feature columns (once per LR pixel of a band) and cell columns (in its bias)."""
        return expert.macs_per_query - self.feature_macs() - CELL_COLUMNS * expert.net[0].out_features

    def macs(self, tier, lr_size, out_size, max_queries: int = DEFAULT_MAX_QUERIES) -> int:
        """Upper bound at this tier: the budget caps the mean expert cost per (pixel, neighbour).

        Every expert's cost per pair is its `pair_macs`; the feature columns of its first layer
        are applied once per LR pixel of each chunk's band (`decode_routed`).
        """
        knob = self.tier(tier).knob
        pairs = 4 * out_size[0] * out_size[1]
        band = chunked_band_pixels(out_size, lr_size, max_queries) * self.feature_macs()
        if self.lightest_only(knob):  # one expert everywhere: per query (`decode_queries`)
            per_query = query_macs(self.experts[0], self.pair_macs(self.experts[0]))
            return self._pixel_macs(mapper=False) * lr_size[0] * lr_size[1] + pairs // 4 * per_query + band
        budget = min(1.0, float(knob))
        heavy = max(self.experts, key=lambda e: e.macs_per_query)
        # The budget caps the mean of macs_per_query (the routing's cost); the columns that are
        # not taken per pair are the same for every expert.
        per_pair = budget * heavy.macs_per_query - (heavy.macs_per_query - self.pair_macs(heavy))
        return self._pixel_macs() * lr_size[0] * lr_size[1] + int(pairs * per_pair) + band

    def routed_macs(
        self,
        state: MoEState,
        out_size: tuple[int, int],
        max_queries: int = DEFAULT_MAX_QUERIES,
        per_query: bool | None = None,
    ) -> int:
        """Exact MACs of decoding one image (B=1) with this routing, in chunks of `max_queries`.

        per_query: whether the decode mixed each query's pairs before the output layer, which
        `decode_routed` does where one expert took every pixel of the whole batch decoded
        together; by default, where it took every pixel of this image (a batch of one)."""
        h, w = state.feat.shape[-2:]
        usage = torch.outer(
            axis_usage(h, out_size[0], state.feat.device), axis_usage(w, out_size[1], state.feat.device)
        ).flatten()
        sole = self.sole_expert(state)
        if per_query is None:
            per_query = sole is not None
        if per_query:  # one expert everywhere: per query (`decode_routed`)
            assert sole is not None, "a per-query decode needs one expert on every pixel"
            expert = self.experts[sole]
            pairs = out_size[0] * out_size[1] * query_macs(expert, self.pair_macs(expert))
        else:
            per_expert = (state.route[0] * usage).sum(1)
            pairs = sum(
                round(n.item()) * self.pair_macs(e) for n, e in zip(per_expert, self.experts, strict=True)
            )
        band = chunked_band_pixels(out_size, (h, w), max_queries) * self.feature_macs()
        return self._pixel_macs(mapper=state.logits is not None) * h * w + pairs + band

    @torch.no_grad()
    def macs_done(
        self,
        lr: torch.Tensor,
        size: tuple[int, int],
        tier: str | Tier,
        max_queries: int = DEFAULT_MAX_QUERIES,
    ) -> int:
        """`routed_macs` of each image: what the mapper actually routed, not the budget's cap.
        The batch is decoded together, per query only where one expert took every pixel of it."""
        knob = self.tier(tier).knob
        per_image = max(1, max_queries // lr.shape[0])
        states = [self.encode(model_range(image), knob, size) for image in lr.split(1)]
        soles = {self.sole_expert(state) for state in states}
        per_query = len(soles) == 1 and None not in soles
        return sum(self.routed_macs(state, size, per_image, per_query) for state in states)

    def params_used(self, knob: Any) -> int:
        """All experts stay loaded and may be routed to; the budget changes MACs, not parameters."""
        return sum(p.numel() for p in self.parameters())
