"""Plain MLP decoders (LIIF-style experts, CLIT's per-stage decoder)."""

from __future__ import annotations

import torch
from torch import nn


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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)
