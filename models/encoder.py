"""EDSR-baseline feature encoder (no upsampling tail), shared by all four methods.

It can run a *sliced* subnet (AnySR: each ResBlock keeps only the first ⌊64·w⌋ inner channels)
and, when built with `scale_aware=True`, AnySR's scale-aware channel attention with feature
interweaving. Width and scale are call arguments, so one instance serves concurrent requests.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

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

    def forward(self, x: torch.Tensor, inner: int, scale: torch.Tensor | None) -> torch.Tensor:
        h = F.conv2d(x, self.conv1.weight[:inner], self.conv1.bias[:inner], padding=1)
        if self.attention is not None:
            if scale is None:
                raise ValueError("a scale-aware encoder needs the scale")
            h = self.attention(h, scale)
        h = F.relu(h)
        return x + F.conv2d(h, self.conv2.weight[:, :inner], self.conv2.bias, padding=1)


class EDSREncoder(nn.Module):
    """EDSR-baseline body: head conv, `blocks` ResBlocks, body conv, global skip; output at LR size."""

    def __init__(self, channels: int = 64, blocks: int = 16, scale_aware: bool = False) -> None:
        super().__init__()
        self.channels = channels
        self.head = nn.Conv2d(3, channels, 3, padding=1)
        self.body = nn.ModuleList(ResBlock(channels, scale_aware) for _ in range(blocks))
        self.tail = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor, width: float = 1.0, scale: torch.Tensor | None = None) -> torch.Tensor:
        inner = inner_channels(self.channels, width)
        h = self.head(x)
        body = h
        for block in self.body:
            body = block(body, inner, scale)
        return h + self.tail(body)

    def params_used(self, width: float = 1.0) -> int:
        c, inner = self.channels, inner_channels(self.channels, width)
        conv = 9 * c * inner + inner  # conv1 sliced outputs
        conv += 9 * inner * c + c  # conv2 sliced inputs
        per_block = conv
        block0 = self.body[0]
        if block0.attention is not None:
            pairs = inner // INTERWEAVE_EVERY
            hidden = block0.attention.fc1.out_features
            per_block += (inner + 2 * pairs) * hidden + hidden + hidden * inner + inner
        head = 3 * c * 9 + c
        tail = c * c * 9 + c
        return head + tail + per_block * len(self.body)

    def macs_per_pixel(self, width: float = 1.0) -> int:
        """Convolution MACs per LR pixel (the per-image attention MLP is added by `macs_fixed`)."""
        c, inner = self.channels, inner_channels(self.channels, width)
        return 9 * 3 * c + 9 * c * c + len(self.body) * 2 * 9 * c * inner

    def macs_fixed(self, width: float = 1.0) -> int:
        """MACs that do not scale with pixels (the scale-attention MLPs, once per image)."""
        block0 = self.body[0]
        if block0.attention is None:
            return 0
        inner = inner_channels(self.channels, width)
        pairs = inner // INTERWEAVE_EVERY
        hidden = block0.attention.fc1.out_features
        return len(self.body) * ((inner + 2 * pairs) * hidden + hidden * inner)
