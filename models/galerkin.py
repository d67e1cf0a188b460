"""SRNO's neural-operator decoder (Galerkin attention) with per-layer widths, and the SR model around it.

Shared by SSRNO (widths read off by integral resampling, chosen by ACRE) and AnySR (widths read off
by slicing, chosen by scale group). Layers act per query pixel except attention, whose Galerkin
form q·(kᵀv)/N sums over all N output pixels of the image. That sum is global, so chunked
decoding is made exact by accumulating Σkᵀv over all chunks layer by layer (`render`), never by
normalising per chunk.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from models.base import DEFAULT_MAX_QUERIES, ScalableSR
from models.encoder import EDSREncoder
from models.implicit import bilinear_at, flat_coords, four_neighbours, gather_pixels, relative_cell
from models.widths import Axis, narrow

Weights = dict[str, torch.Tensor]


@dataclass(frozen=True)
class DecoderWidths:
    """Width of each independently sized group: residual trunk, per-block attention and FFN."""

    trunk: int
    attn: tuple[int, ...]
    ffn: tuple[int, ...]


class GalerkinDecoder(nn.Module):
    """Lifting (4-neighbour features + offsets + cell), Galerkin attention blocks, projection."""

    def __init__(
        self,
        feat_dim: int = 64,
        width: int = 256,
        blocks: int = 2,
        heads: int = 16,
        ffn: int = 256,
        proj: int = 256,
    ) -> None:
        super().__init__()
        if width % heads:
            raise ValueError("width must be a multiple of heads")
        self.width, self.heads, self.ffn_width = width, heads, ffn
        self.lift = nn.Linear(4 * (feat_dim + 2) + 2, width)
        self.qkv = nn.ModuleList(nn.Linear(width, 3 * width) for _ in range(blocks))
        self.core = nn.ModuleList(nn.Linear(width, width) for _ in range(blocks))
        self.ffn1 = nn.ModuleList(nn.Linear(width, ffn) for _ in range(blocks))
        self.ffn2 = nn.ModuleList(nn.Linear(ffn, width) for _ in range(blocks))
        dh = width // heads
        self.norm = nn.ParameterDict(
            {
                f"{kind}{i}": nn.Parameter(
                    torch.ones(heads, dh) if kind.endswith("g") else torch.zeros(heads, dh)
                )
                for i in range(blocks)
                for kind in ("kg", "kb", "vg", "vb")
            }
        )
        self.fc1 = nn.Linear(width, proj)
        self.fc2 = nn.Linear(proj, 3)

    @property
    def blocks(self) -> int:
        return len(self.qkv)

    def full_widths(self) -> DecoderWidths:
        return DecoderWidths(self.width, (self.width,) * self.blocks, (self.ffn_width,) * self.blocks)

    # ---- narrowing -----------------------------------------------------------------------------
    def narrowed(self, widths: DecoderWidths, mode: str) -> Weights:
        """The weights of the decoder at `widths`, read off the full-width parameters."""
        w, h = self.width, self.heads
        trunk = Axis(1, w, widths.trunk)
        out: Weights = {
            "lift.w": narrow(self.lift.weight, trunk, None, mode),
            "lift.b": narrow(self.lift.bias, trunk, None, mode),
            "fc1.w": narrow(self.fc1.weight, None, trunk, mode),
            "fc1.b": self.fc1.bias,
            "fc2.w": self.fc2.weight,
            "fc2.b": self.fc2.bias,
        }
        for i in range(self.blocks):
            if widths.attn[i] % h:
                raise ValueError(f"attention width {widths.attn[i]} is not a multiple of {h} heads")
            head = Axis(h, w // h, widths.attn[i] // h)
            qkv_out = Axis(3 * h, w // h, widths.attn[i] // h)
            ffn = Axis(1, self.ffn_width, widths.ffn[i])
            out[f"qkv{i}.w"] = narrow(self.qkv[i].weight, qkv_out, trunk, mode)
            out[f"qkv{i}.b"] = narrow(self.qkv[i].bias, qkv_out, None, mode)
            out[f"core{i}.w"] = narrow(self.core[i].weight, trunk, head, mode)
            out[f"core{i}.b"] = narrow(self.core[i].bias, trunk, None, mode)
            out[f"ffn1{i}.w"] = narrow(self.ffn1[i].weight, ffn, trunk, mode)
            out[f"ffn1{i}.b"] = narrow(self.ffn1[i].bias, ffn, None, mode)
            out[f"ffn2{i}.w"] = narrow(self.ffn2[i].weight, trunk, ffn, mode)
            out[f"ffn2{i}.b"] = narrow(self.ffn2[i].bias, trunk, None, mode)
            for kind in ("kg", "kb", "vg", "vb"):
                out[f"{kind}{i}"] = narrow(self.norm[f"{kind}{i}"].reshape(-1), head, None, mode)
        return out

    # ---- the layers, as functions of narrowed weights ------------------------------------------
    @staticmethod
    def lift_inputs(feat: torch.Tensor, coord: torch.Tensor, out_size: tuple[int, int]) -> torch.Tensor:
        """[4 offsets, 4 area-weighted neighbour features, relative cell] per query."""
        grid = feat.shape[-2:]
        rels, feats = [], []
        for n in four_neighbours(coord, grid):
            rels.append(n.rel)
            feats.append(gather_pixels(feat, n.index) * n.weight)
        cell = relative_cell(out_size, grid, coord.shape[0], coord.device)
        cell = cell[:, None, :].expand(-1, coord.shape[1], -1)
        return torch.cat([*rels, *feats, cell], dim=-1)

    def kv_sum(self, p: Weights, i: int, x: torch.Tensor) -> torch.Tensor:
        """Σ over this chunk's pixels of kᵀv, per head: (B, heads, dh, dh)."""
        b, n, _ = x.shape
        third = p[f"qkv{i}.w"].shape[0] // 3
        kv = F.linear(x, p[f"qkv{i}.w"][third:], p[f"qkv{i}.b"][third:]).reshape(b, n, 2, self.heads, -1)
        k, v = kv.unbind(2)
        dh = k.shape[-1]
        k = F.layer_norm(k, (dh,)) * p[f"kg{i}"].view(self.heads, dh) + p[f"kb{i}"].view(self.heads, dh)
        v = F.layer_norm(v, (dh,)) * p[f"vg{i}"].view(self.heads, dh) + p[f"vb{i}"].view(self.heads, dh)
        return torch.einsum("bnhd,bnhe->bhde", k, v)

    def block(self, p: Weights, i: int, x: torch.Tensor, kv_mean: torch.Tensor) -> torch.Tensor:
        """One Galerkin block given the image-wide mean of kᵀv."""
        b, n, _ = x.shape
        third = p[f"qkv{i}.w"].shape[0] // 3
        q = F.linear(x, p[f"qkv{i}.w"][:third], p[f"qkv{i}.b"][:third]).reshape(b, n, self.heads, -1)
        attn = torch.einsum("bnhd,bhde->bnhe", q, kv_mean).flatten(2)
        h = x + F.linear(attn, p[f"core{i}.w"], p[f"core{i}.b"])
        return x + F.linear(
            F.gelu(F.linear(h, p[f"ffn1{i}.w"], p[f"ffn1{i}.b"])), p[f"ffn2{i}.w"], p[f"ffn2{i}.b"]
        )

    def head(self, p: Weights, x: torch.Tensor) -> torch.Tensor:
        return F.linear(F.gelu(F.linear(x, p["fc1.w"], p["fc1.b"])), p["fc2.w"], p["fc2.b"])

    def run(self, p: Weights, lifted: torch.Tensor) -> torch.Tensor:
        """Single pass over all queries at once (training, or images that fit in one chunk)."""
        x = F.linear(lifted, p["lift.w"], p["lift.b"])
        n = x.shape[1]
        for i in range(self.blocks):
            x = self.block(p, i, x, self.kv_sum(p, i, x) / n)
        return self.head(p, x)

    # ---- cost ----------------------------------------------------------------------------------
    def macs_per_query(self, widths: DecoderWidths, multipass: bool = False) -> int:
        """MACs per output pixel; `multipass` adds what chunked rendering recomputes."""
        d, heads = widths.trunk, self.heads
        lift = self.lift.in_features * d
        head = d * self.fc1.out_features + self.fc1.out_features * 3
        kv, q = [], []
        for i in range(self.blocks):
            a, f = widths.attn[i], widths.ffn[i]
            attention = heads * (a // heads) ** 2
            kv.append(d * 2 * a + attention)
            q.append(d * a + attention + a * d + 2 * d * f)
        total = lift + sum(kv) + sum(q) + head
        if multipass:  # pass i re-lifts and re-runs blocks < i before accumulating block i's kᵀv
            total += self.blocks * lift + sum(sum(q[:i]) for i in range(self.blocks))
        return total

    def params_used(self, widths: DecoderWidths) -> int:
        d = widths.trunk
        total = (
            (self.lift.in_features + 1) * d + (d + 1) * self.fc1.out_features + self.fc2.weight.numel() + 3
        )
        for i in range(self.blocks):
            a, f = widths.attn[i], widths.ffn[i]
            total += (d + 1) * 3 * a + 4 * a + (a + 1) * d + (d + 1) * f + (f + 1) * d
        return total


@dataclass(frozen=True)
class GalerkinState:
    feat: torch.Tensor
    weights: Weights


class GalerkinSR(ScalableSR):
    """EDSR encoder + Galerkin decoder; subclasses map a knob to encoder width and decoder widths."""

    width_mode = "slice"

    def __init__(self, scale_aware: bool = False, width: int = 256, heads: int = 16, **_: Any) -> None:
        super().__init__()
        self.encoder = EDSREncoder(scale_aware=scale_aware)
        self.decoder = GalerkinDecoder(feat_dim=self.encoder.channels, width=width, heads=heads)

    def encoder_inner(self, knob: Any) -> tuple[int, ...]:
        """Inner width of every encoder ResBlock for this knob (full by default)."""
        return self.encoder.full_inner()

    def decoder_widths(self, knob: Any) -> DecoderWidths:
        return self.decoder.full_widths()

    def encoder_scale(self, lr: torch.Tensor, out_size: tuple[int, int]) -> torch.Tensor | None:
        return None

    def encode(self, lr: torch.Tensor, knob: Any, out_size: tuple[int, int]) -> GalerkinState:
        inner = self.encoder_inner(knob)
        enc_weights = self.memo(("encoder", inner), lambda: self.encoder.narrowed(inner, self.width_mode))
        feat = self.encoder(lr, enc_weights, self.encoder_scale(lr, out_size))
        widths = self.decoder_widths(knob)
        weights = self.memo(("decoder", widths), lambda: self.decoder.narrowed(widths, self.width_mode))
        return GalerkinState(feat, weights)

    def decode(self, state: GalerkinState, coord, out_size, knob) -> torch.Tensor:
        return self.decoder.run(state.weights, self.decoder.lift_inputs(state.feat, coord, out_size))

    def render(self, lr: torch.Tensor, size: tuple[int, int], knob: Any, chunk: int) -> torch.Tensor:
        """Exact chunked decoding: one pass per attention block accumulates its global Σkᵀv.

        Later passes recompute earlier layers chunk by chunk instead of storing them, so peak
        memory depends on the chunk, not on the output size (at most blocks+1 passes).
        """
        b, total = lr.shape[0], size[0] * size[1]
        if total <= chunk:
            return super().render(lr, size, knob, chunk)
        state = self.encode(lr, knob, size)
        p, dec = state.weights, self.decoder
        kv_means: list[torch.Tensor] = []

        def run_chunk(start: int, stop: int, depth: int) -> tuple[torch.Tensor, torch.Tensor]:
            coord = flat_coords(size, start, stop, lr.device).expand(b, -1, -1)
            x = F.linear(dec.lift_inputs(state.feat, coord, size), p["lift.w"], p["lift.b"])
            for i in range(depth):
                x = dec.block(p, i, x, kv_means[i])
            return x, coord

        for i in range(dec.blocks):
            acc = None
            for start in range(0, total, chunk):
                x, _ = run_chunk(start, min(total, start + chunk), i)
                part = dec.kv_sum(p, i, x)
                acc = part if acc is None else acc + part
            kv_means.append(acc / total)
        out = torch.empty(b, total, 3, device=lr.device)
        for start in range(0, total, chunk):
            stop = min(total, start + chunk)
            x, coord = run_chunk(start, stop, dec.blocks)
            out[:, start:stop] = dec.head(p, x) + bilinear_at(lr, coord)
        return out.transpose(1, 2).reshape(b, 3, *size)

    def macs_for(self, knob: Any, lr_size, out_size, max_queries: int = DEFAULT_MAX_QUERIES) -> int:
        inner = self.encoder_inner(knob)
        lr_px, out_px = lr_size[0] * lr_size[1], out_size[0] * out_size[1]
        enc = self.encoder.macs_per_pixel(inner) * lr_px + self.encoder.macs_fixed(inner)
        multipass = out_px > max_queries
        return enc + self.decoder.macs_per_query(self.decoder_widths(knob), multipass) * out_px

    def params_used(self, knob: Any) -> int:
        return self.encoder.params_used(self.encoder_inner(knob)) + self.decoder.params_used(
            self.decoder_widths(knob)
        )

    def macs(self, tier, lr_size, out_size, max_queries: int = DEFAULT_MAX_QUERIES) -> int:
        return self.macs_for(self.tier(tier).knob, lr_size, out_size, max_queries)
