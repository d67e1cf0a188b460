"""Plain MLP decoders (LIIF-style experts, CLIT's per-stage decoder) and their thin output product."""

from __future__ import annotations

import torch
from torch import nn


def thin_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """x·Wᵀ + b for an output only a few channels wide (the decoders' RGB layer), as W·xᵀ.

    CPU BLAS runs a (rows × C)·(C × 3) product far below its speed; taken as (3 × C)·(C × rows)
    it costs 0.72–0.83 of the time, copy of the result included (2,048 and 4,096 rows, C = 256,
    one and two threads). The result is a transposed view of shape (..., out).
    """
    flat = x.reshape(-1, x.shape[-1])
    return torch.addmm(bias[:, None], weight, flat.t()).t().view(*x.shape[:-1], weight.shape[0])


class MLP(nn.Module):
    """`depth` linear layers in → hidden … hidden → out with an activation between them."""

    def __init__(self, in_dim: int, hidden: int, out_dim: int, depth: int, act: type[nn.Module] = nn.ReLU):
        super().__init__()
        if depth < 2:
            raise ValueError("an MLP decoder needs at least 2 layers")
        dims = [in_dim] + [hidden] * (depth - 1) + [out_dim]
        layers: list[nn.Module] = []
        for i in range(depth):
            layers.append(nn.Linear(dims[i], dims[i + 1]))
            if i < depth - 1:  # in place where possible: a Linear's output is not needed for its backward
                layers.append(act(inplace=True) if act is nn.ReLU else act())
        self.net = nn.Sequential(*layers)
        self.macs_per_query = sum(dims[i] * dims[i + 1] for i in range(depth))

    def after_first(self, x: torch.Tensor) -> torch.Tensor:
        """The layers after the first Linear, given its output (callers that compute the first
        layer their own way, e.g. once per LR pixel); the output layer is a `thin_linear`."""
        last = self.net[-1]
        return thin_linear(self.between(x), last.weight, last.bias)

    def between(self, x: torch.Tensor) -> torch.Tensor:
        """The layers between the first Linear's output and the output layer: the last hidden
        layer's activations (callers that mix several of them before the linear output layer)."""
        # Unpacked, not sliced: slicing an nn.Sequential builds a new module (~35 µs), and MoEISR
        # and CLIT call this once per tile.
        _, *middle, _ = self.net
        for layer in middle:
            x = layer(x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.after_first(self.net[0](x))
