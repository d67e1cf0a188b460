"""CLIT: cascaded local implicit transformer; the paper's pick for large scales (ours: models/README).

Each stage attends from a query to the g×g grid of latent codes around it (local attention with a
positional bias), concatenates the attention-weighted values and decodes them with an MLP.
Stage 1 works on the LR feature grid; stage n works on the features bilinearly upsampled to the
n-th intermediate grid (the scale split geometrically over the stages). The output is
Σ 0.75^(N−n) · residual_n plus the bilinear upsample of the input. The knob is N.

All of it is local, so a chunk of output rows needs only a band of each stage's grid: `decode`
builds just that band (with the conv halo), which keeps memory bounded at any scale and is
exactly equal to building the whole grid.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from models import local_attention
from models.base import DEFAULT_MAX_QUERIES, ScalableSR
from models.encoder import EDSREncoder
from models.implicit import nearest_index, pixel_centres, relative_cell, spans
from models.loop_pool import can_run
from models.mlp import MLP, linear_act_images
from models.registry import register
from models.tiers import Tier

STAGE_DECAY = 0.75
# CLIT's gathers are g²·dim per query: decode fewer queries per chunk than the default.
MAX_CHUNK = 16384
# Queries per tile inside a chunk: a tile's gathered codes (g²·dim each) and MLP activations stay in cache.
ATTENTION_TILE = 2048


@dataclass
class CLITState:
    feat: torch.Tensor  # (B, dim, h, w) projected encoder features
    grids: list[tuple[int, int]]  # grid size of each stage


def stage_grids(lr_size: tuple[int, int], out_size: tuple[int, int], stages: int) -> list[tuple[int, int]]:
    """Grid of stage n: the LR size times the first n−1 of `stages` equal (geometric) scale factors."""
    grids = []
    for n in range(stages):
        frac = n / stages
        grids.append(
            (
                max(lr_size[0], round(lr_size[0] * (out_size[0] / lr_size[0]) ** frac)),
                max(lr_size[1], round(lr_size[1] * (out_size[1] / lr_size[1]) ** frac)),
            )
        )
    return grids


class Stage(nn.Module):
    """One local implicit transformer: q/k/v convs, positional bias, MLP decoder."""

    def __init__(self, dim: int, heads: int, grid: int, hidden: int, freqs: int) -> None:
        super().__init__()
        self.dim, self.heads, self.radius = dim, heads, grid // 2
        self.qkv = nn.Conv2d(dim, 3 * dim, 3, padding=0)
        self.register_buffer("freqs", 2.0 ** torch.linspace(-2, 3, freqs) * math.pi, persistent=False)
        self.bias = nn.Linear(4 * freqs, heads)
        self.mlp = MLP(grid * grid * dim + 2, hidden, 3, depth=5, act=nn.GELU)

    def position_bias_weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The positional bias of all g² neighbours as one linear map of the query's own encoding.

        Neighbour j sits at an integer grid offset o_j from the query's nearest code, so its
        relative position is r − 2·o_j (in half-cells) and, by the angle-difference identities,
        sin/cos(f·(r − 2·o_j)) are fixed combinations of sin/cos(f·r). Folding those into the
        bias layer gives a (g²·heads, 4F) weight applied to the query's 4F features: the same
        MACs as applying the layer per neighbour, without encoding g² positions per query.
        """
        heads, nf = self.heads, self.freqs.numel()
        w = self.bias.weight.view(heads, 2, 2, nf)  # (head, axis y/x, sin/cos, frequency)
        w_sin, w_cos = w[:, :, 0], w[:, :, 1]
        offs = torch.arange(-self.radius, self.radius + 1, device=w.device, dtype=w.dtype)
        grid = torch.stack(torch.meshgrid(offs, offs, indexing="ij"), -1).view(-1, 1, 2, 1)  # (g², 1, 2, 1)
        phase = 2 * grid * self.freqs  # (g², 1, 2, F)
        cos, sin = phase.cos(), phase.sin()
        on_sin = w_sin * cos + w_cos * sin  # (g², heads, 2, F)
        on_cos = w_cos * cos - w_sin * sin
        weight = torch.stack([on_sin, on_cos], 3).reshape(-1, 4 * nf)  # rows (j, head)
        return weight, self.bias.bias.repeat(grid.shape[0])

    def band(self, feat: torch.Tensor, grid: tuple[int, int], rows: tuple[int, int]) -> torch.Tensor:
        """q/k/v maps (B, 3·dim, rows, Gw) for grid rows [a, b), zero-padded like a full 3×3 conv."""
        a, b = rows
        gh, gw = grid
        lo, hi = max(a - 1, 0), min(b + 1, gh)
        if (gh, gw) == tuple(feat.shape[-2:]):
            base = feat[:, :, lo:hi]
        else:  # bilinear upsample of the features, evaluated only at the band's pixel centres
            ys = pixel_centres(gh, feat.device)[lo:hi]
            xs = pixel_centres(gw, feat.device)
            mesh = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), -1).unsqueeze(0)
            mesh = mesh.expand(feat.shape[0], -1, -1, -1)
            base = F.grid_sample(feat, mesh, mode="bilinear", padding_mode="border", align_corners=False)
        base = F.pad(base, (1, 1, int(a == 0), int(b == gh)))
        return self.qkv(base)

    def forward(
        self, feat: torch.Tensor, grid: tuple[int, int], coord: torch.Tensor, out_size: tuple[int, int]
    ) -> torch.Tensor:
        """Residual (B, Q, 3) of this stage at the queries."""
        gh, gw = grid
        r, heads = self.radius, self.heads
        iy, ix = nearest_index(coord[..., 0], gh), nearest_index(coord[..., 1], gw)
        a = max(int(iy.min()) - r - 1, 0)
        b = min(int(iy.max()) + r + 2, gh)
        q_map, k_map, v_map = self.band(feat, grid, (a, b)).chunk(3, dim=1)
        bsz, nq = coord.shape[:2]
        loops = can_run(q_map, k_map, v_map)  # the compiled attention (`local_attention`)
        if loops:  # it samples q itself, from a pixel-major band, at each query's band pixel
            q_bands = q_map.permute(0, 2, 3, 1).contiguous()
            spot = torch.stack(
                [
                    ((coord[..., 0] + 1) * (gh / 2) - a - 0.5).clamp(0, b - a - 1),
                    ((coord[..., 1] + 1) * (gw / 2) - 0.5).clamp(0, gw - 1),
                ],
                -1,
            )  # grid_sample's pixel coordinates, clipped to the band as its border padding does
        else:  # q: bilinear sample in band-local normalised coordinates
            band_y = ((coord[..., 0] + 1) * gh / 2 - a) / (b - a) * 2 - 1
            sample = torch.stack([coord[..., 1], band_y], -1).unsqueeze(1)
            q = F.grid_sample(q_map, sample, mode="bilinear", padding_mode="border", align_corners=False)
            q = q[:, :, 0].transpose(1, 2).reshape(bsz, nq, heads, -1)
        rows = (b - a) * gw
        # Pixel-major copies of the k and v bands, each band followed by a zero row: the code of
        # a neighbour outside the grid (what a zero-padded grid would give).
        k_table, v_table = (
            F.pad(m.flatten(2).transpose(1, 2), (0, 0, 0, 1)).flatten(0, 1) for m in (k_map, v_map)
        )
        # The cell is the same for every query of an image, so its part of the MLP's first layer
        # is a per-image bias and the g²·dim attended values need no concatenation. That layer,
        # its bias and its activation are one fused product per image on CPU (`linear_act`).
        first = self.mlp.net[0]
        wide = first.in_features - 2
        cell = relative_cell(out_size, grid, bsz, coord.device)
        cell_bias = F.linear(cell, first.weight[:, wide:], first.bias)  # (B, hidden)
        first_weight = first.weight[:, :wide].contiguous()
        offs = torch.arange(-r, r + 1, device=coord.device)
        batch_rows = (torch.arange(bsz, device=coord.device) * (rows + 1))[:, None, None]
        dh = self.dim // heads
        pos_weight, pos_bias = self.position_bias_weights()

        def attend(s: int, e: int) -> torch.Tensor:
            """Residual of queries [s, e): attention over their g×g neighbours, then the MLP."""
            n = e - s
            ny = (iy[:, s:e, None, None] + offs[:, None]).expand(-1, -1, 2 * r + 1, 2 * r + 1).flatten(2)
            nx = (ix[:, s:e, None, None] + offs[None, :]).expand(-1, -1, 2 * r + 1, 2 * r + 1).flatten(2)
            inside = (ny >= 0) & (ny < gh) & (nx >= 0) & (nx < gw)
            index = torch.where(inside, (ny.clamp(0, gh - 1) - a) * gw + nx.clamp(0, gw - 1), rows)
            index = (index + batch_rows).flatten()
            g2 = ny.shape[-1]
            # The query's position relative to its nearest code, in half-cells, per axis.
            c = coord[:, s:e]
            rel = torch.stack(
                [(c[..., 0] + 1) * gh - 2 * iy[:, s:e] - 1, (c[..., 1] + 1) * gw - 2 * ix[:, s:e] - 1], -1
            )
            angles = rel[..., None] * self.freqs  # (B, n, 2, F)
            pe = torch.cat([angles.sin(), angles.cos()], -1).flatten(-2)  # (B, n, 4F)
            position = F.linear(pe, pos_weight, pos_bias).view(bsz, n, g2, heads)
            if loops:  # compiled loops, rows read in place
                neighbours = index.view(bsz * n, g2)
                spots = spot[:, s:e].reshape(bsz * n, 2)
                bias = position.view(bsz * n, g2, heads)
                weighted = local_attention.attend(k_table, v_table, neighbours, q_bands, spots, bias)
                weighted = weighted.view(bsz, n, -1)
            else:
                k = k_table.index_select(0, index).view(bsz, n, g2, heads, dh)
                v = v_table.index_select(0, index).view(bsz, n, g2, heads, dh)
                logits = (k * q[:, s:e, None]).sum(-1) / math.sqrt(dh)  # (B, n, g², heads)
                attn = (logits + position).softmax(dim=2)
                weighted = (v * attn[..., None]).reshape(bsz, n, -1)
            hidden = linear_act_images(weighted, first_weight, cell_bias, self.mlp.act)
            return self.mlp.after_first(hidden, activated=True)

        # Tiles of queries keep the gathered codes and the MLP's activations in cache.
        return torch.cat([attend(s, e) for s, e in spans(nq, ATTENTION_TILE)], 1)

    def macs(self, grid_pixels: int, queries: int, chunks: int = 1) -> int:
        """MACs of `chunks` calls on bands of `grid_pixels` in all, for `queries` in all (batch 1)."""
        g2 = (2 * self.radius + 1) ** 2
        conv = 9 * self.dim * 3 * self.dim * grid_pixels
        first = self.mlp.net[0]
        cell = 2 * first.out_features  # the cell's part of the first layer, once per call
        per_query = g2 * self.bias.in_features * self.heads + self.mlp.macs_per_query - cell
        return conv + per_query * queries + cell * chunks


@register("clit")
class CLIT(ScalableSR):
    """EDSR-baseline + feature projection + up to 3 cascaded local implicit transformers."""

    def __init__(
        self,
        dim: int = 128,
        heads: int = 8,
        grid: int = 3,
        stages: int = 3,
        hidden: int = 256,
        freqs: int = 8,
        **_: Any,
    ) -> None:
        super().__init__()
        self.encoder = EDSREncoder()
        self.proj = nn.Conv2d(self.encoder.channels, dim, 3, padding=1)
        self.stages = nn.ModuleList(Stage(dim, heads, grid, hidden, freqs) for _ in range(stages))

    def tiers(self) -> list[Tier]:
        return [
            Tier(f"stages{n}", n - 1, n, f"stages={n}", self.params_used(n))
            for n in range(1, len(self.stages) + 1)
        ]

    def sample_training_knob(self, scale: float, rng: random.Random) -> int:
        """Cumulative training: every depth of cascade is trained, on the final output only."""
        return rng.randint(1, len(self.stages))

    def encode(self, lr: torch.Tensor, knob: int, out_size: tuple[int, int]) -> CLITState:
        feat = self.proj(self.encoder(lr))
        return CLITState(feat, stage_grids(tuple(lr.shape[-2:]), out_size, int(knob)))

    def decode(self, state: CLITState, coord, out_size, knob) -> torch.Tensor:
        out = None
        for stage, grid in zip(self.stages, state.grids, strict=False):
            res = stage(state.feat, grid, coord, out_size)
            out = res if out is None else STAGE_DECAY * out + res
        return out

    def chunk_queries(self, knob: Any, budget: int, out_size: tuple[int, int]) -> int:
        """Capped for CLIT's wide gathers, but never less than one output row."""
        return min(budget, max(MAX_CHUNK, out_size[1]))

    def macs(self, tier, lr_size, out_size, max_queries: int = DEFAULT_MAX_QUERIES) -> int:
        """Exact count, including the halo rows that neighbouring chunks' bands both compute."""
        n = int(self.tier(tier).knob)
        lr_px, out_px = lr_size[0] * lr_size[1], out_size[0] * out_size[1]
        total = (self.encoder.macs_per_pixel() + 9 * self.proj.in_channels * self.proj.out_channels) * lr_px
        chunk = self.chunk_queries(n, max_queries, out_size)
        # The service counts every tier on every request: all chunks at once, not one by one.
        starts = torch.arange(0, out_px, chunk)
        first = pixel_centres(out_size[0])[starts // out_size[1]]  # each chunk's first and last row
        last = pixel_centres(out_size[0])[((starts + chunk).clamp(max=out_px) - 1) // out_size[1]]
        for stage, grid in zip(self.stages, stage_grids(lr_size, out_size, n), strict=False):
            lo = nearest_index(first, grid[0]) - stage.radius - 1
            hi = nearest_index(last, grid[0]) + stage.radius + 2
            band_rows = int((hi.clamp(max=grid[0]) - lo.clamp(min=0)).sum())
            total += stage.macs(band_rows * grid[1], out_px, len(starts))
        return total

    def params_used(self, knob: Any) -> int:
        shared = sum(p.numel() for p in self.encoder.parameters()) + sum(
            p.numel() for p in self.proj.parameters()
        )
        return shared + sum(sum(p.numel() for p in s.parameters()) for s in self.stages[: int(knob)])
