"""The interface every scalable arbitrary-scale SR model implements, and the shared pipeline.

Pipeline: normalise the LR image to [-1, 1], encode it once, decode the output pixels in
bounded chunks of queries, add the bilinear upsample of the input, map back to [0, 1].
The tier (or the method's raw knob) is an argument of every call and all intermediate features
are returned, never stored on the module, so one loaded model serves concurrent requests.
"""

from __future__ import annotations

import threading
from abc import abstractmethod
from collections.abc import Callable, Hashable
from typing import Any

import torch
from torch import nn
from torch.utils._pytree import tree_map

from models.defaults import DEFAULT_MAX_QUERIES
from models.implicit import bilinear_at, flat_coords, spans
from models.tiers import Tier


def model_range(lr: torch.Tensor) -> torch.Tensor:
    """An image in [0, 1] as the networks take it: float, in [-1, 1]."""
    return (lr.float() - 0.5) / 0.5


class ScalableSR(nn.Module):
    """Base class: subclasses define tiers, `encode`, `decode`, `macs` and `params_used`."""

    method: str = "?"

    def __init__(self) -> None:
        super().__init__()
        self._memo: dict[Hashable, Any] = {}
        self._memo_lock = threading.Lock()

    # ---- tiers -------------------------------------------------------------------------------
    @abstractmethod
    def tiers(self) -> list[Tier]:
        """Runnable tiers, cheapest first."""

    def default_tier(self, scale: tuple[float, float]) -> Tier:
        """The tier used when a request names none: the richest, unless the method says otherwise."""
        return self.tiers()[-1]

    def tier(self, ref: str | Tier | None = None, scale: tuple[float, float] = (4.0, 4.0)) -> Tier:
        """Resolve a tier name (or None for the default at this scale) to a Tier."""
        if isinstance(ref, Tier):
            return ref
        if ref is None or ref == "auto":
            return self.default_tier(scale)
        for t in self.tiers():
            if t.name == ref:
                return t
        raise KeyError(f"{self.method} has no tier {ref!r}; tiers: {[t.name for t in self.tiers()]}")

    # ---- the network ---------------------------------------------------------------------------
    @abstractmethod
    def encode(self, lr: torch.Tensor, knob: Any, out_size: tuple[int, int]) -> Any:
        """Per-image state (features) for decoding; `lr` is normalised to [-1, 1]."""

    @abstractmethod
    def decode(self, state: Any, coord: torch.Tensor, out_size: tuple[int, int], knob: Any) -> torch.Tensor:
        """Residual RGB (B, Q, 3) at query coordinates (B, Q, 2) of an `out_size` image."""

    def forward(
        self, lr: torch.Tensor, coord: torch.Tensor, out_size: tuple[int, int], knob: Any
    ) -> torch.Tensor:
        """Training path: predictions (normalised) at the queried coordinates of an `out_size` image."""
        state = self.encode(lr, knob, out_size)
        return self.decode(state, coord, out_size, knob) + bilinear_at(lr, coord)

    # ---- inference -----------------------------------------------------------------------------
    @torch.no_grad()
    def upscale(
        self,
        lr: torch.Tensor,
        size: tuple[int, int],
        tier: str | Tier | None = None,
        max_queries: int = DEFAULT_MAX_QUERIES,
    ) -> torch.Tensor:
        """Upscale `lr` (B, 3, h, w) in [0, 1] to (B, 3, H, W) = `size` with the given tier.

        Output pixels are decoded in chunks of at most `max_queries` (over the batch), so peak
        memory does not grow with the output size (beyond the output itself).
        """
        if lr.dim() != 4 or lr.shape[1] != 3:
            raise ValueError(f"expected (B, 3, h, w), got {tuple(lr.shape)}")
        out_h, out_w = int(size[0]), int(size[1])
        if out_h < 1 or out_w < 1:
            raise ValueError(f"output size must be positive, got {size}")
        scale = (out_h / lr.shape[2], out_w / lr.shape[3])
        knob = self.tier(tier, scale).knob
        chunk = self.chunk_queries(knob, max(1, max_queries // lr.shape[0]), (out_h, out_w))
        out = self.render(model_range(lr), (out_h, out_w), knob, chunk)
        return (out * 0.5 + 0.5).clamp_(0, 1)

    def chunk_queries(self, knob: Any, budget: int, out_size: tuple[int, int]) -> int:
        """Queries per chunk for `budget`, the per-image `max_queries`: the budget itself, unless
        a method's per-query memory differs (it then overrides this, and its `macs` counts with it)."""
        return budget

    def render(self, lr: torch.Tensor, size: tuple[int, int], knob: Any, chunk: int) -> torch.Tensor:
        """The output image (B, 3, H, W), normalised, of `lr` (normalised): encode, then decode."""
        return self.decode_image(self.encode(lr, knob, size), lr, size, knob, chunk)

    def decode_image(
        self, state: Any, lr: torch.Tensor, size: tuple[int, int], knob: Any, chunk: int
    ) -> torch.Tensor:
        """Decode every output pixel of `encode`'s state in chunks of `chunk` queries
        (`chunk_queries` of the budget; exact for decoders with independent queries)."""
        b, total = lr.shape[0], size[0] * size[1]
        out = torch.empty(b, total, 3, device=lr.device)
        for start, stop in spans(total, chunk):
            coord = flat_coords(size, start, stop, lr.device).expand(b, -1, -1)
            out[:, start:stop] = self.decode(state, coord, size, knob) + bilinear_at(lr, coord)
        return out.transpose(1, 2).reshape(b, 3, *size)

    # ---- cost ----------------------------------------------------------------------------------
    @abstractmethod
    def macs(
        self,
        tier: str | Tier,
        lr_size: tuple[int, int],
        out_size: tuple[int, int],
        max_queries: int = DEFAULT_MAX_QUERIES,
    ) -> int:
        """Multiply-accumulates of convolutions and matrix products of `upscale` for one image.

        `max_queries` is the chunk size `upscale` runs with: where chunking recomputes work
        (SRNO's exact multi-pass attention, CLIT's band halos) the count includes it.
        """

    @abstractmethod
    def params_used(self, knob: Any) -> int:
        """Parameters that the knob's subnetwork actually uses."""

    def macs_done(
        self,
        lr: torch.Tensor,
        size: tuple[int, int],
        tier: str | Tier,
        max_queries: int = DEFAULT_MAX_QUERIES,
    ) -> int:
        """Multiply-accumulates that `upscale(lr, size, tier, max_queries)` performs on this batch.

        `macs` for every image where the work does not depend on the content; a method whose
        routing does (MoEISR: `macs` is then only the tier's cap) overrides this, so that a rate
        measured on a real run divides by the work that was really done.
        """
        per_image = max(1, max_queries // lr.shape[0])
        return lr.shape[0] * self.macs(tier, (lr.shape[2], lr.shape[3]), size, per_image)

    def macs_per_output_pixel(self, tier: str | Tier, scale: float, lr_side: int = 128) -> float:
        out = round(lr_side * scale)
        return self.macs(tier, (lr_side, lr_side), (out, out)) / (out * out)

    # ---- derived-weight memo -------------------------------------------------------------------
    def memo(self, key: Hashable, make: Callable[[], Any], differentiable: bool = True) -> Any:
        """Cache what is derived from the weights (narrowed layers, tier widths).

        Entries are tagged with the parameters' version counters, so any in-place update (an
        optimiser step, a load) invalidates them. Differentiable results are never cached while
        gradients are on: training needs a fresh graph every step.
        """
        if differentiable and (self.training or torch.is_grad_enabled()):
            return make()
        version = tuple(p._version for p in self.parameters())
        with self._memo_lock:
            hit = self._memo.get(key)
            if hit is not None and hit[0] == version:
                return hit[1]
        # Detach: a view of a parameter taken under no_grad still claims to require grad.
        value = tree_map(lambda v: v.detach() if isinstance(v, torch.Tensor) else v, make())
        with self._memo_lock:
            self._memo[key] = (version, value)
        return value

    def forget_derived(self) -> None:
        """Drop cached derived weights (after loading or changing parameters)."""
        with self._memo_lock:
            self._memo.clear()

    def _apply(self, fn, *args, **kwargs):  # device/dtype moves invalidate derived weights
        if hasattr(self, "_memo"):
            self.forget_derived()
        return super()._apply(fn, *args, **kwargs)

    def load_state_dict(self, *args, **kwargs):
        self.forget_derived()
        return super().load_state_dict(*args, **kwargs)
