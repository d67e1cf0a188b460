"""SRNO's neural-operator decoder (Galerkin attention) with per-layer widths, and the SR model around it.

Shared by SSRNO (widths read off by integral resampling, chosen by ACRE) and AnySR (widths read off
by slicing, chosen by scale group). Layers act per query pixel except attention, whose Galerkin
form q·(kᵀv)/N sums over all N output pixels of the image. That sum is global, so chunked
decoding is made exact by accumulating Σkᵀv over all chunks layer by layer (`decode_image`), never by
normalising per chunk.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from models import kv_stats
from models.base import DEFAULT_MAX_QUERIES, ScalableSR
from models.encoder import EDSREncoder
from models.implicit import (
    GridAxes,
    band_rows,
    bilinear_at,
    chunked_band_pixels,
    flat_coords,
    neighbour_grid,
    relative_cell,
    spans,
)
from models.lift_grid import lift_span
from models.loop_pool import can_run
from models.mlp import linear_act, linear_act_images, thin_linear
from models.widths import Axis, narrow

Weights = dict[str, torch.Tensor]
LAYER_NORM_EPS = 1e-5  # F.layer_norm's default, which the weights were trained with
# Bytes of a tile's widest per-query tensor at inference (its k/v product, FFN hidden layer or
# the head's hidden layer; `GalerkinDecoder.query_tile`): under glibc's 32 MiB mmap ceiling, so
# the allocator reuses its pages from tile to tile (`models.allocator`).
TILE_BYTES = 16 * 2**20
# Lifted queries are made in pieces of at most this many bytes per image (`lift_piece`): glibc
# maps every block over 32 MiB afresh and unmaps it when freed, so a chunk lifted whole at
# d ≥ 128 faulted in its pages on every call (SSRNO M ×2 at 128²: 16,000 faults per decode).
LIFT_PIECE_BYTES = 16 * 2**20
PIECE_STEP = 4096  # pieces are whole multiples of this many queries, at least one
PROJ_WIDTH = 256  # the head's hidden layer (SRNO's), which no tier narrows


def tile_queries(widest: int) -> int:
    """Queries per tile whose widest per-query tensor, `widest` floats a query, fits `TILE_BYTES`:
    the largest such power of two (`GalerkinDecoder.query_tile`)."""
    return 1 << (TILE_BYTES // (4 * widest)).bit_length() - 1


@dataclass(frozen=True)
class DecoderWidths:
    """Width of each independently sized group: residual trunk, per-block attention and FFN."""

    trunk: int
    attn: tuple[int, ...]
    ffn: tuple[int, ...]


@dataclass(frozen=True)
class KVSums:
    """Per head, over some pixels: Σ r_k r_v k̃ᵀṽ (B, heads, dh, dh), Σ r_k k̃ and Σ r_v ṽ
    (B, heads, dh), and the number of pixels (`GalerkinDecoder.kv_sum`).

    Block i's Σkᵀv is an affine function of these (`GalerkinDecoder.kv_mean`), so tiles add their
    sums and the layer norm's gain and shift are applied once per image, not once per tile.
    """

    scaled: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    count: int

    def __add__(self, other: KVSums) -> KVSums:
        return KVSums(
            self.scaled + other.scaled, self.k + other.k, self.v + other.v, self.count + other.count
        )

    def __radd__(self, other: int) -> KVSums:
        """`sum()` starts from 0."""
        if other != 0:
            return NotImplemented
        return self


class GalerkinDecoder(nn.Module):
    """Lifting (4-neighbour features + offsets + cell), Galerkin attention blocks, projection."""

    def __init__(
        self,
        feat_dim: int = 64,
        width: int = 256,
        blocks: int = 2,
        heads: int = 16,
        ffn: int = 256,
        proj: int = PROJ_WIDTH,
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
        raw: Weights = {
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
            raw[f"qkv{i}.w"] = narrow(self.qkv[i].weight, qkv_out, trunk, mode)
            raw[f"qkv{i}.b"] = narrow(self.qkv[i].bias, qkv_out, None, mode)
            raw[f"core{i}.w"] = narrow(self.core[i].weight, trunk, head, mode)
            raw[f"core{i}.b"] = narrow(self.core[i].bias, trunk, None, mode)
            raw[f"ffn1{i}.w"] = narrow(self.ffn1[i].weight, ffn, trunk, mode)
            raw[f"ffn1{i}.b"] = narrow(self.ffn1[i].bias, ffn, None, mode)
            raw[f"ffn2{i}.w"] = narrow(self.ffn2[i].weight, trunk, ffn, mode)
            raw[f"ffn2{i}.b"] = narrow(self.ffn2[i].bias, trunk, None, mode)
            for kind in ("kg", "kb", "vg", "vb"):
                raw[f"{kind}{i}"] = narrow(self.norm[f"{kind}{i}"].reshape(-1), head, None, mode)
        return self.rearranged(raw)

    def rearranged(self, raw: Weights) -> Weights:
        """The same layers regrouped for fast decoding; the maths is unchanged.

        * lift: the neighbour-feature columns are split off, to be applied once per LR pixel
          (`lift_queries`). The 8 offset columns take only four distinct values per query (each
          neighbour's (dy, dx) pairs one of two row offsets with one of two column offsets), so
          they merge into 4 columns: the two neighbours that share an offset share its column;
          the cell columns and bias make one vector per image (`lift_position`);
        * q is separated from k/v, and the k/v rows are centred within each head, which is the
          mean subtraction of their layer norm done once on the weights instead of per query;
        * the FFN output biases leave the residual stream: each block adds x + FFN(…) without
          one, and the sum of the biases so far (`shift{i}`, constant) enters the layers that
          read the stream instead, folded into their biases (k/v and the head here, the map into
          the FFN's hidden layer per image, `attention_map`): one pass less per block and tile.
        """
        c = self.lift.in_features - 10  # 4 neighbours × feature channels
        lw = raw["lift.w"]
        d = lw.shape[0]
        out: Weights = {
            # (4d, C): row block k projects neighbour k's feature (its columns 8+kC … 8+(k+1)C).
            "lift.feat": lw[:, 8 : 8 + c].reshape(d, 4, c // 4).transpose(0, 1).reshape(4 * d, c // 4),
            # Offset columns 2k, 2k+1 are neighbour k's (dy, dx); neighbours 0, 1 lie on the row
            # above, 2, 3 on the row below, 0, 2 in the left column, 1, 3 in the right one.
            "lift.pos": torch.stack(
                [lw[:, 0] + lw[:, 2], lw[:, 1] + lw[:, 5], lw[:, 4] + lw[:, 6], lw[:, 3] + lw[:, 7]], 1
            ),  # (d, 4): the row offset above, column offset left, row below, column right
            "lift.cell": lw[:, 8 + c :],
            "lift.b": raw["lift.b"],
        }
        out.update({k: raw[k] for k in ("fc1.w", "fc2.w", "fc2.b")})
        shift = torch.zeros_like(raw["lift.b"])  # Σ of the FFN output biases left out so far
        for i in range(self.blocks):
            qkv_w, qkv_b = raw[f"qkv{i}.w"], raw[f"qkv{i}.b"]
            a = qkv_w.shape[0] // 3
            kv_w = qkv_w[a:].reshape(2 * self.heads, a // self.heads, -1)
            kv_b = qkv_b[a:].reshape(2 * self.heads, a // self.heads)
            out[f"q{i}.w"], out[f"q{i}.b"] = qkv_w[:a], qkv_b[:a]
            out[f"kv{i}.w"] = (kv_w - kv_w.mean(1, keepdim=True)).reshape(2 * a, -1)
            # Centred rows map the shift to per-head centred values: the bias stays centred.
            out[f"kv{i}.b"] = (kv_b - kv_b.mean(1, keepdim=True)).reshape(2 * a) + out[f"kv{i}.w"] @ shift
            out[f"kv{i}.g"] = torch.cat([raw[f"kg{i}"], raw[f"vg{i}"]])
            out[f"kv{i}.beta"] = torch.cat([raw[f"kb{i}"], raw[f"vb{i}"]])
            for k in ("core", "ffn1"):
                out[f"{k}{i}.w"], out[f"{k}{i}.b"] = raw[f"{k}{i}.w"], raw[f"{k}{i}.b"]
            out[f"ffn2{i}.w"] = raw[f"ffn2{i}.w"]
            if i:
                out[f"shift{i}"] = shift
            shift = shift + raw[f"ffn2{i}.b"]
        out["fc1.b"] = raw["fc1.b"] + raw["fc1.w"] @ shift
        return out

    # ---- the layers, as functions of narrowed weights ------------------------------------------
    @staticmethod
    def lift_table(p: Weights, feat: torch.Tensor, band: tuple[int, int]) -> torch.Tensor:
        """The lift's neighbour-feature products of every pixel of LR rows band = [lo, hi) of
        every image, one per neighbour slot: (B·P·4, d), row (image, pixel, slot)."""
        lo, hi = band
        pixels = feat[:, :, lo:hi].flatten(2).transpose(1, 2)  # (B, P, C)
        return F.linear(pixels, p["lift.feat"]).reshape(-1, p["lift.pos"].shape[0])

    @staticmethod
    def lift_position(p: Weights, out_size: tuple[int, int], grid: tuple[int, int], device) -> torch.Tensor:
        """The lift's weights (d, 5) on a query's [row offset above, column offset left, row below,
        column right, 1]: the last column is this image's cell product plus the bias, made
        elementwise once per image."""
        cell = relative_cell(out_size, grid, 1, device)[0]
        const = p["lift.b"] + p["lift.cell"][:, 0] * cell[0] + p["lift.cell"][:, 1] * cell[1]
        return torch.cat([p["lift.pos"], const[:, None]], 1)

    @staticmethod
    def lift_queries(
        p: Weights, feat: torch.Tensor, coord: torch.Tensor, out_size: tuple[int, int]
    ) -> torch.Tensor:
        """Lifted queries (B, Q, d): the linear map of [4 offsets, 4 weighted neighbour features, cell].

        Each neighbour's feature enters linearly, scaled by its ensemble weight, so its product
        with the lift weights is taken once per LR pixel (only over the band of LR rows these
        queries touch, `band_rows`) and gathered per query: a weighted sum of 4 table rows (one
        fused `embedding_bag`) instead of a (4C+10)-wide concatenation and product. The offset,
        cell and bias product then adds into that sum in place.
        """
        b, q = coord.shape[:2]
        h, w = feat.shape[-2:]
        d = p["lift.pos"].shape[0]
        index, rel, weight = neighbour_grid(coord, (h, w))  # (B, 4, Q), (B, 4, Q, 2), (B, 4, Q)
        lo, hi = band_rows(index, w)
        table = GalerkinDecoder.lift_table(p, feat, (lo, hi))
        first = (torch.arange(b, device=coord.device) * ((hi - lo) * w * 4))[:, None, None] - lo * w * 4
        slot = torch.arange(4, device=coord.device)[:, None]
        rows = (first + index * 4 + slot).transpose(1, 2).reshape(-1, 4)  # (B·Q, 4)
        weights = weight.transpose(1, 2).reshape(-1, 4)
        x = F.embedding_bag(rows, table, per_sample_weights=weights, mode="sum")
        # Neighbour 0 holds the row offset above and column offset left, neighbour 3 the others.
        offsets = torch.stack([rel[:, 0, :, 0], rel[:, 0, :, 1], rel[:, 3, :, 0], rel[:, 3, :, 1]], -1)
        pos = torch.cat([offsets, coord.new_ones(b, q, 1)], -1).view(-1, 5)
        pos_t = GalerkinDecoder.lift_position(p, out_size, (h, w), coord.device).t()
        x = x.addmm_(pos, pos_t) if not torch.is_grad_enabled() else torch.addmm(x, pos, pos_t)
        return x.view(b, q, d)

    def kv_sum(self, p: Weights, i: int, x: torch.Tensor) -> KVSums:
        """The sums over this tile's pixels that block i's Σkᵀv is made of (`kv_mean`).

        k̃ and ṽ are made transposed, (B, 2, heads, dh, N) with the pixels last, so that every
        per-pixel statistic is a reduction along contiguous pixels: the square sums per head, and
        per head Σ r_k r_v k̃ᵀṽ (dh × dh) and Σ r k̃, Σ r ṽ as products over the pixels. With
        pixels first these took per-head reductions over rows only dh long, or products with 0/1
        group matrices and over all pairs of heads to avoid them: 0.73–0.96 of that time per
        4,096-query tile at d = 64…256 on one and two threads, and none of those extra MACs.
        On CPU at inference a compiled loop takes them (`models.kv_stats`).
        """
        b, n, d = x.shape
        weight, bias, h = p[f"kv{i}.w"], p[f"kv{i}.b"], self.heads
        two_a = weight.shape[0]
        dh = two_a // 2 // h
        if can_run(x, weight):
            return KVSums(*kv_stats.head_sums(x, weight, bias, h), n)
        bias = bias.view(1, two_a, 1).expand(b, two_a, n)
        kv = torch.baddbmm(bias, weight.expand(b, two_a, d), x.transpose(1, 2)).view(b, 2, h, dh, n)
        inv_rms = (kv.square().sum(3) / dh + LAYER_NORM_EPS).rsqrt()  # (B, 2, h, N)
        k, v, r_k, r_v = kv[:, 0], kv[:, 1], inv_rms[:, 0], inv_rms[:, 1]
        return KVSums(
            torch.einsum("bhin,bhjn->bhij", k * (r_k * r_v)[:, :, None], v),
            torch.einsum("bhin,bhn->bhi", k, r_k),
            torch.einsum("bhin,bhn->bhi", v, r_v),
            n,
        )

    def kv_mean(self, p: Weights, i: int, sums: KVSums) -> torch.Tensor:
        """Block i's mean over pixels of kᵀv per head (B, heads, dh, dh), from its `KVSums`.

        k and v are layer-normed per head: k = g_k⊙(r_k·k̃) + β_k with k̃ centred (the weights
        are, `rearranged`) and r_k its inverse root mean square, likewise v. Expanding the
        product, the affine parts come out of the sum:
            Σkᵀv = g_k⊗g_v ⊙ Σ r_k r_v k̃ᵀṽ + (g_k⊙Σ r_k k̃)⊗β_v + β_k⊗(g_v⊙Σ r_v ṽ) + N·β_k⊗β_v,
        so per pixel only k̃ is scaled (by r_k r_v, one number per head): the per-element
        normalise-scale-shift of k and v is gone, and what remains is applied once per image,
        to the sums of all its tiles.
        """
        h, dh = sums.k.shape[1:]
        g, beta = p[f"kv{i}.g"].view(2, h, dh), p[f"kv{i}.beta"].view(2, h, dh)
        k_sum, v_sum = g[0] * sums.k, g[1] * sums.v
        total = (
            g[0][..., :, None] * sums.scaled * g[1][..., None, :]
            + k_sum[..., :, None] * beta[1][..., None, :]
            + beta[0][..., :, None] * v_sum[..., None, :]
            + sums.count * beta[0][..., :, None] * beta[1][..., None, :]
        )
        return total / sums.count

    def attention_map(self, p: Weights, i: int, kv_mean: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Block i's attention, its residual and its FFN's first layer as one affine map from the
        block's input to the FFN's hidden layer (before GELU): x ↦ x·M + c, M of d × f.

        Galerkin attention is linear in q once the image-wide mean of kᵀv is known, and q and the
        core projection are linear too, so q-projection, attention, core projection and the
        residual (an identity part) compose into a single d×d matrix per image. Its output
        feeds only the FFN's first layer (the block returns x + FFN(x + attention)), so that
        layer composes in as well: one d×f product per query instead of a d×d and a d×f one,
        which took the decoders to 0.85–0.94 of their earlier time (SSRNO XS and X ×2, AnySR w1
        ×3 at 128², 2 threads, two alternating runs each). M is returned transposed, (B, f, d),
        the layout of a linear layer's weight, which the fused product with GELU takes.
        """
        heads, dh = kv_mean.shape[1], kv_mean.shape[2]
        q_w = p[f"q{i}.w"].view(heads, dh, -1)  # (h, dh, d)
        core_t = p[f"core{i}.w"].t()  # (a, d)
        m = torch.einsum("hkd,bhke->bdhe", q_w, kv_mean).flatten(2) @ core_t  # (B, d, d)
        m = m + torch.eye(m.shape[-1], dtype=m.dtype, device=m.device)  # and the block's residual
        c = F.linear(
            torch.einsum("hk,bhke->bhe", p[f"q{i}.b"].view(heads, dh), kv_mean).flatten(1),
            p[f"core{i}.w"],
            p[f"core{i}.b"],
        )  # (B, d)
        w1, b1 = p[f"ffn1{i}.w"], p[f"ffn1{i}.b"]
        m, c = m @ w1.t(), F.linear(c, w1, b1)  # (B, d, f), (B, f)
        if f"shift{i}" in p:  # the stream's left-out biases, through the whole map
            c = c + torch.einsum("d,bdf->bf", p[f"shift{i}"], m)
        return m.transpose(1, 2).contiguous(), c

    def block(
        self, p: Weights, i: int, x: torch.Tensor, attn: tuple[torch.Tensor, torch.Tensor]
    ) -> torch.Tensor:
        """One Galerkin block given its map into the FFN's hidden layer (`attention_map`).

        At inference x is updated in place and returned: the FFN's output product accumulates
        onto it (its bias is folded into the layers that read the stream, `rearranged`), so a
        block makes no copy of the stream and no pass to add a bias. The map into the hidden
        layer and its GELU are one fused product per image (`linear_act`).
        """
        m_t, c = attn  # M transposed (B, f, d)
        if torch.is_grad_enabled():
            return x + F.linear(F.gelu(c[:, None] + x @ m_t.transpose(1, 2)), p[f"ffn2{i}.w"])
        hidden = linear_act_images(x, m_t, c, "gelu")
        # out=x rather than baddbmm_: the same product in place, and one that dispatch modes such
        # as the FLOP counter know (they list aten.baddbmm, not its in-place twin).
        return torch.baddbmm(x, hidden, p[f"ffn2{i}.w"].t().expand(x.shape[0], -1, -1), out=x)

    def head(self, p: Weights, x: torch.Tensor) -> torch.Tensor:
        return thin_linear(linear_act(x, p["fc1.w"], p["fc1.b"], "gelu"), p["fc2.w"], p["fc2.b"])

    def run(self, p: Weights, x: torch.Tensor) -> torch.Tensor:
        """Single pass over all lifted queries at once (training); x is left as it was."""
        if not torch.is_grad_enabled():
            x = x.clone()  # inference blocks update their input in place
        for i in range(self.blocks):
            x = self.block(p, i, x, self.attention_map(p, i, self.kv_mean(p, i, self.kv_sum(p, i, x))))
        return self.head(p, x)

    # ---- cost ----------------------------------------------------------------------------------
    def macs(
        self, widths: DecoderWidths, lr_size: tuple[int, int], out_size: tuple[int, int], chunk: int
    ) -> int:
        """MACs of decoding one image in chunks of `chunk` queries (`GalerkinSR.decode_image`).

        Per query: the offset/cell product, each block's k/v, kᵀv, its map into the FFN's hidden
        layer and the FFN's output layer, the head. Per piece of lifted queries (`lift_piece`)
        and pass: the lift product over the band of LR rows. Per image: each block's map
        (`attention_map`). Several chunks mean blocks+1 passes, where pass i re-lifts and
        re-runs blocks < i before accumulating block i's kᵀv.
        """
        d, heads = widths.trunk, self.heads
        c = (self.lift.in_features - 10) // 4
        total_q = out_size[0] * out_size[1]
        pos = 5 * d  # 4 merged offset columns, and the cell and bias's column of ones
        head = d * self.fc1.out_features + self.fc1.out_features * 3
        kv, run, maps = [], [], 0
        for i in range(self.blocks):
            a, f = widths.attn[i], widths.ffn[i]
            # k/v product, Σ r_k r_v k̃ᵀṽ per head, the two sums Σ r·k̃ and Σ r·ṽ.
            kv.append(d * 2 * a + a * (a // heads) + 2 * a)
            run.append(2 * d * f)  # the map into the FFN's hidden layer, and its output layer
            # Per image: attention map (q·kᵀv, core projection, their biases), composed with
            # ffn1, and after the first block the left-out FFN biases through it (`shift{i}`).
            maps += d * a * (a // heads) + a * d * d + a * (a // heads) + a * d + d * d * f + d * f
            maps += d * f if i else 0
        band = chunked_band_pixels(out_size, lr_size, self.lift_piece(d))
        lift = band * c * 4 * d + total_q * pos
        if total_q <= chunk:
            return lift + total_q * (sum(kv) + sum(run) + head) + maps
        passes = lift * (self.blocks + 1)
        per_query = sum(kv[i] + sum(run[:i]) for i in range(self.blocks)) + sum(run) + head
        return passes + total_q * per_query + maps

    def query_tile(self, widths: DecoderWidths) -> int:
        """Queries per tile of the per-query layers at inference: the largest power of two
        whose widest tensor fits `TILE_BYTES` (16,384 queries up to 256 floats per query, as
        in SSRNO XS–M and AnySR w0.5; 8,192 from L up, whose k/v products are wider).

        Each tile costs a fixed number of calls, and right after a tile's products have filled
        the caches each call's Python work runs several times slower than alone (a k/v sum's
        array handling took about 90 µs on top of its 4,096-query product and loop, d = 64).
        A narrow tier does little work per query, so with the 4,096-query tiles used until
        2026-12-03 such costs were a large share of its decoder (BLAS also runs the narrow
        products a little faster on more rows). Against those tiles, these took
        the decoders to (medians of 4 rounds, `scripts/ab_bench.sh`, 128², 2 threads, ×2 / ×4)
        SSRNO XS 0.79 / 0.84, S 0.89 / 0.84, M 0.84 / 0.85, L 0.97 / 0.92, X 0.92 / 0.95, AnySR
        w0.5 0.85 / 0.83, w0.7–w1 0.89–0.98. Their 4–16 MiB activations no longer stay in a
        core's L2 cache from one layer to the next; the narrow tiers gained all the same.
        """
        return tile_queries(max(2 * max(widths.attn), max(widths.ffn), self.fc1.out_features))

    @staticmethod
    def lift_piece(trunk: int) -> int:
        """Queries per piece of lifted queries at this trunk width (a multiple of `PIECE_STEP`)."""
        return max(PIECE_STEP, LIFT_PIECE_BYTES // (4 * trunk) // PIECE_STEP * PIECE_STEP)

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
        return self.decoder.run(
            state.weights, self.decoder.lift_queries(state.weights, state.feat, coord, out_size)
        )

    def chunk_queries(self, knob: Any, budget: int, out_size: tuple[int, int]) -> int:
        """Queries per chunk for this knob, `budget` being counted at the full decoder width.

        A single-pass chunk holds its lifted queries, trunk-width floats each, so a narrow tier
        holds proportionally more queries in the same bytes. That matters because one chunk
        needs one pass, where larger images need blocks+1 (`decode_image`): at 128² → 512² the XS
        tier runs about a fifth faster in one chunk of 262,144 queries than in four of 65,536.
        """
        return budget * self.decoder.width // self.decoder_widths(knob).trunk

    def decode_image(
        self, state: GalerkinState, lr: torch.Tensor, size: tuple[int, int], knob: Any, chunk: int
    ) -> torch.Tensor:
        """Exact chunked decoding: one pass per attention block accumulates its global Σkᵀv.

        An image that fits one chunk is lifted once and carried from block to block. A larger
        one takes blocks+1 passes, each recomputing the earlier layers instead of storing them,
        so peak memory depends on the chunk, not on the output size. Queries are lifted in
        pieces of at most `LIFT_PIECE_BYTES` per image (`lift_piece`; in the passes, one piece
        alive at a time): a chunk lifted whole at d ≥ 128 went through blocks over glibc's
        32 MiB mmap ceiling, whose pages were faulted in afresh on every call, and pieces took
        SSRNO M ×2 and AnySR w0.5 ×2 to 0.86–0.89 of their decoder time, L ×4 0.85, X ×2
        0.90–0.94 (128², 2 threads, three alternating runs). Within a piece the per-query layers
        run a tile of queries at a time (`GalerkinDecoder.query_tile`), so that their widest
        activations reuse the same memory from one layer to the next. On CPU at inference a
        piece is lifted by one compiled loop over its output rows (`models.lift_grid`), the
        same values as `lift_queries`.
        """
        p, dec = state.weights, self.decoder
        b, total = lr.shape[0], size[0] * size[1]
        out = torch.empty(b, total, 3, device=lr.device)
        attention: list[tuple[torch.Tensor, torch.Tensor]] = []

        grid = state.feat.shape[-2:]
        axes, position = None, None
        if can_run(state.feat, p["lift.pos"]):  # the compiled lift: per-axis tables, weights once
            axes, position = GridAxes.of(size, grid, lr.device), dec.lift_position(p, size, grid, lr.device)

        def lifted(start: int, stop: int) -> tuple[torch.Tensor, torch.Tensor]:
            coord = flat_coords(size, start, stop, lr.device).expand(b, -1, -1)
            if axes is None:
                return dec.lift_queries(p, state.feat, coord, size), coord
            band = axes.band(size[1], start, stop)
            table = dec.lift_table(p, state.feat, band)
            return lift_span(table, band, axes, position, b, grid[1], (start, stop)), coord

        widths = self.decoder_widths(knob)
        tile = dec.query_tile(widths)
        pieces = spans(total, dec.lift_piece(widths.trunk))

        # Σkᵀv is summed tile by tile as the tiles go: never a list that grows with the output.
        if total <= chunk:
            lifted_pieces = [(start, *lifted(start, stop)) for start, stop in pieces]
            kv = sum(
                dec.kv_sum(p, 0, x[:, s:e]) for _, x, _ in lifted_pieces for s, e in spans(x.shape[1], tile)
            )
            for i in range(dec.blocks):
                attention.append(dec.attention_map(p, i, dec.kv_mean(p, i, kv)))
                kv = 0
                for start, x, _ in lifted_pieces:
                    for s, e in spans(x.shape[1], tile):
                        y = dec.block(p, i, x[:, s:e], attention[i])  # in place: x holds y
                        if i + 1 < dec.blocks:
                            kv = kv + dec.kv_sum(p, i + 1, y)
                        else:
                            out[:, start + s : start + e] = dec.head(p, y)
            for start, x, coord in lifted_pieces:
                out[:, start : start + x.shape[1]] += bilinear_at(lr, coord)
            return out.transpose(1, 2).reshape(b, 3, *size)

        def through(x: torch.Tensor, depth: int):
            """Each tile of a piece's lifted queries after blocks < depth (in place in x)."""
            for s, e in spans(x.shape[1], tile):
                y = x[:, s:e]
                for i in range(depth):
                    y = dec.block(p, i, y, attention[i])
                yield s, e, y

        # Several passes: each lifts the image piece by piece, one piece alive at a time.
        for i in range(dec.blocks):
            kv = sum(
                dec.kv_sum(p, i, y)
                for start, stop in pieces
                for _, _, y in through(lifted(start, stop)[0], i)
            )
            attention.append(dec.attention_map(p, i, dec.kv_mean(p, i, kv)))
        for start, stop in pieces:
            x, coord = lifted(start, stop)
            for s, e, y in through(x, dec.blocks):
                out[:, start + s : start + e] = dec.head(p, y)
            out[:, start:stop] += bilinear_at(lr, coord)
        return out.transpose(1, 2).reshape(b, 3, *size)

    def macs_for(self, knob: Any, lr_size, out_size, max_queries: int = DEFAULT_MAX_QUERIES) -> int:
        inner = self.encoder_inner(knob)
        lr_px = lr_size[0] * lr_size[1]
        enc = self.encoder.macs_per_pixel(inner) * lr_px + self.encoder.macs_fixed(inner)
        chunk = self.chunk_queries(knob, max_queries, out_size)
        return enc + self.decoder.macs(self.decoder_widths(knob), lr_size, out_size, chunk)

    def params_used(self, knob: Any) -> int:
        return self.encoder.params_used(self.encoder_inner(knob)) + self.decoder.params_used(
            self.decoder_widths(knob)
        )

    def macs(self, tier, lr_size, out_size, max_queries: int = DEFAULT_MAX_QUERIES) -> int:
        return self.macs_for(self.tier(tier).knob, lr_size, out_size, max_queries)
