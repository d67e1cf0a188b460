"""EDSR-baseline feature encoder (no upsampling tail), shared by all four methods.

Each ResBlock's inner width (conv1's outputs, conv2's inputs) can be narrowed per call, by
slicing (AnySR's subnets keep the first ⌊64·w⌋ channels) or by integral resampling (SSRNO);
the 64-channel trunk stays whole. Built with `scale_aware=True` it adds AnySR's scale-aware
channel attention with feature interweaving. Widths and scale are call arguments, so one
instance serves concurrent requests.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from models.widths import Axis, narrow

BlockWeights = tuple[torch.Tensor, torch.Tensor, torch.Tensor]
INTERWEAVE_EVERY = 16  # AnySR inserts the scale pair after every 16 pooled channels (λ = 4 at 64)


def inner_channels(channels: int, width: float) -> int:
    """Inner channels of a ResBlock at subnet width `width` (AnySR's ⌊C·w⌋)."""
    return max(1, int(channels * width + 1e-6))


class ScaleAttention(nn.Module):
    """Channel attention conditioned on the scale, with the scale pair interwoven into the pooled features."""

    def __init__(self, channels: int, hidden: int = 128) -> None:
        super().__init__()
        pairs = channels // INTERWEAVE_EVERY
        self.fc1 = nn.Linear(channels + 2 * pairs, hidden)
        self.fc2 = nn.Linear(hidden, channels)
        for fc in (self.fc1, self.fc2):
            nn.init.kaiming_normal_(fc.weight)
            fc.weight.data.mul_(0.1)
            nn.init.zeros_(fc.bias)
        # Start as a near-identity gate (sigmoid(4) ≈ 0.98), so that fine-tuning from a trained
        # plain encoder begins where that encoder was instead of halving every block's branch.
        nn.init.constant_(self.fc2.bias, 4.0)

    def forward(self, x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        """x: (B, C', h, w) with C' ≤ C; scale: (B, 2) = (s_h, s_w)."""
        c = x.shape[1]
        pooled = x.mean(dim=(2, 3))
        parts = []
        for start in range(0, c, INTERWEAVE_EVERY):
            chunk = pooled[:, start : start + INTERWEAVE_EVERY]
            parts.append(chunk)
            if chunk.shape[1] == INTERWEAVE_EVERY:
                parts.append(scale)
        woven = torch.cat(parts, dim=1)
        hidden = F.relu(F.linear(woven, self.fc1.weight[:, : woven.shape[1]], self.fc1.bias))
        gate = torch.sigmoid(F.linear(hidden, self.fc2.weight[:c], self.fc2.bias[:c]))
        return x * gate[:, :, None, None]


class ResBlock(nn.Module):
    """conv3×3 → (scale attention) → ReLU → conv3×3, plus identity; inner width sliceable."""

    def __init__(self, channels: int, scale_aware: bool) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)
        self.attention = ScaleAttention(channels) if scale_aware else None

    def narrowed(self, inner: int, mode: str) -> BlockWeights:
        """conv1 weight/bias and conv2 weight at this inner width."""
        axis = Axis(1, self.conv1.out_channels, inner)
        return (
            narrow(self.conv1.weight, axis, None, mode),
            narrow(self.conv1.bias, axis, None, mode),
            narrow(self.conv2.weight, None, axis, mode),
        )

    def forward(self, x: torch.Tensor, weights: BlockWeights, scale: torch.Tensor | None) -> torch.Tensor:
        w1, b1, w2 = weights
        h = F.conv2d(x, w1, b1, padding=1)
        if self.attention is not None:
            if scale is None:
                raise ValueError("a scale-aware encoder needs the scale")
            h = self.attention(h, scale)
        h = F.relu(h)
        return x + F.conv2d(h, w2, self.conv2.bias, padding=1)


class EDSREncoder(nn.Module):
    """EDSR-baseline body: head conv, `blocks` ResBlocks, body conv, global skip; output at LR size."""

    def __init__(self, channels: int = 64, blocks: int = 16, scale_aware: bool = False) -> None:
        super().__init__()
        self.channels = channels
        self.head = nn.Conv2d(3, channels, 3, padding=1)
        self.body = nn.ModuleList(ResBlock(channels, scale_aware) for _ in range(blocks))
        self.tail = nn.Conv2d(channels, channels, 3, padding=1)

    def full_inner(self) -> tuple[int, ...]:
        return (self.channels,) * len(self.body)

    def uniform_inner(self, width: float) -> tuple[int, ...]:
        """Inner widths of AnySR's subnet `width` (the same ⌊64·w⌋ in every block)."""
        return (inner_channels(self.channels, width),) * len(self.body)

    def narrowed(self, inner: tuple[int, ...] | None = None, mode: str = "slice") -> list[BlockWeights]:
        """Every ResBlock's weights at these inner widths (cache them for repeated inference)."""
        return [
            block.narrowed(n, mode) for block, n in zip(self.body, inner or self.full_inner(), strict=True)
        ]

    def forward(
        self, x: torch.Tensor, weights: list[BlockWeights] | None = None, scale: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Features at LR size; `weights` from `narrowed` (default: the full network)."""
        weights = weights or self.narrowed()
        # Channels-last activations: on CPU the whole encoder then takes 0.71–0.91 of its NCHW time
        # at inference (128² input, one and two threads) and 0.93–1.0 in a training step. The
        # result goes back to NCHW, the layout the decoders index.
        h = self.head(x.contiguous(memory_format=torch.channels_last))
        body = h
        for block, w in zip(self.body, weights, strict=True):
            body = block(body, w, scale)
        return (h + self.tail(body)).contiguous()

    def _attention_params(self, n: int) -> int:
        att = self.body[0].attention
        if att is None:
            return 0
        pairs, hidden = n // INTERWEAVE_EVERY, att.fc1.out_features
        return (n + 2 * pairs) * hidden + hidden + hidden * n + n

    def params_used(self, inner: tuple[int, ...] | None = None) -> int:
        c = self.channels
        total = (3 * c * 9 + c) + (c * c * 9 + c)  # head and tail convs
        for n in inner or self.full_inner():
            total += 9 * c * n + n + 9 * n * c + c + self._attention_params(n)
        return total

    def macs_per_pixel(self, inner: tuple[int, ...] | None = None) -> int:
        """Convolution MACs per LR pixel (the per-image attention MLPs are in `macs_fixed`)."""
        c = self.channels
        return 9 * 3 * c + 9 * c * c + sum(2 * 9 * c * n for n in inner or self.full_inner())

    def macs_fixed(self, inner: tuple[int, ...] | None = None) -> int:
        """MACs that do not scale with pixels (the scale-attention MLPs, once per image)."""
        att = self.body[0].attention
        if att is None:
            return 0
        hidden = att.fc1.out_features
        return sum(
            (n + 2 * (n // INTERWEAVE_EVERY)) * hidden + hidden * n for n in inner or self.full_inner()
        )
