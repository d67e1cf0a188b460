"""Turn one full-width weight into the weight of a narrower layer, by slicing or by resampling.

Both AnySR and SSRNO run a narrower copy of the same network. They differ only in how a width-n
axis is read off the full width-N axis:

* ``slice`` (AnySR, weight-sharing subnets): keep the first n channels.
* ``integral`` (SSRNO, Integral Neural Networks): treat the channel axis as a continuous variable
  and sample it at n evenly spaced points with cubic convolution; input axes are also rescaled by
  the quadrature factor N/n so that the layer's integral over its inputs is preserved.

An axis may hold several groups (attention heads, or the q/k/v thirds of a projection); the map
acts within each group. Maps are small dense matrices, so the result stays differentiable for
training with random widths.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

MODES = ("slice", "integral")


def _cubic(t: torch.Tensor, a: float = -0.75) -> torch.Tensor:
    """Keys' cubic convolution kernel (the one behind bicubic resampling)."""
    t = t.abs()
    near = ((a + 2) * t - (a + 3)) * t * t + 1
    far = ((a * t - 5 * a) * t + 8 * a) * t - 4 * a
    return torch.where(t <= 1, near, torch.where(t < 2, far, torch.zeros_like(t)))


def axis_map(full: int, n: int, mode: str) -> torch.Tensor:
    """(n, full) matrix reading an n-point axis off a full-size one (one group)."""
    if n == full:
        return torch.eye(full)
    if not 0 < n < full:
        raise ValueError(f"width {n} outside (0, {full}]")
    if mode == "slice":
        return torch.eye(full)[:n]
    if mode != "integral":
        raise ValueError(f"unknown width mode {mode!r}")
    points = torch.linspace(0, full - 1, n) if n > 1 else torch.tensor([(full - 1) / 2])
    taps = torch.arange(full, dtype=torch.float32)
    weights = _cubic(points[:, None] - taps[None, :])
    # Clamp-to-border: fold the weight of taps beyond the ends onto the end taps.
    for offset in (1, 2):
        weights[:, 0] += _cubic(points + offset)
        weights[:, -1] += _cubic(points - (full - 1) - offset)
    return weights


@dataclass(frozen=True)
class Axis:
    """A weight axis of `groups` × `size` channels, of which `groups` × `n` are kept."""

    groups: int
    size: int
    n: int

    def matrix(self, mode: str, device: torch.device) -> torch.Tensor:
        m = axis_map(self.size, self.n, mode).to(device)
        if self.groups == 1:
            return m
        return torch.block_diag(*([m] * self.groups))

    def quadrature(self, mode: str) -> float:
        return self.size / self.n if mode == "integral" else 1.0


def _slice_axis(w: torch.Tensor, axis: Axis, dim: int) -> torch.Tensor:
    shape = w.shape
    grouped = w.reshape(*shape[:dim], axis.groups, axis.size, *shape[dim + 1 :])
    kept = grouped.narrow(dim + 1, 0, axis.n)
    return kept.reshape(*shape[:dim], axis.groups * axis.n, *shape[dim + 1 :])


def _map_axis(w: torch.Tensor, axis: Axis, dim: int, mode: str) -> torch.Tensor:
    if mode == "slice":
        return _slice_axis(w, axis, dim)
    moved = w.movedim(dim, -1)
    mapped = moved @ axis.matrix(mode, w.device).T
    return mapped.movedim(-1, dim)


def narrow(weight: torch.Tensor, out_axis: Axis | None, in_axis: Axis | None, mode: str) -> torch.Tensor:
    """The weight of the narrowed layer: dim 0 read off `out_axis`, dim 1 off `in_axis`.

    Works for linear (out, in), convolution (out, in, k, k) and 1-D parameters (in_axis None).
    """
    if mode not in MODES:
        raise ValueError(f"unknown width mode {mode!r}")
    w = weight
    if out_axis is not None and out_axis.n != out_axis.size:
        w = _map_axis(w, out_axis, 0, mode)
    if in_axis is not None and in_axis.n != in_axis.size:
        w = _map_axis(w, in_axis, 1, mode) * in_axis.quadrature(mode)
    return w
