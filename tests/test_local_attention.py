"""models.local_attention: CLIT's compiled attention loops give what the torch ops give, and the
model decodes alike through either."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from model_support import counting

from models import registry
from models.local_attention import QUERY_BLOCK, attend


def plain(k_table, v_table, index, q, position) -> torch.Tensor:
    """Gather, dot products, softmax over the neighbours, weighted rows: the torch formulation."""
    n, g2 = index.shape
    heads, dh = q.shape[1:]
    k = k_table[index].view(n, g2, heads, dh)
    v = v_table[index].view(n, g2, heads, dh)
    attn = ((k * q[:, None]).sum(-1) / math.sqrt(dh) + position).softmax(dim=1)
    return (v * attn[..., None]).reshape(n, -1)


def sampled(q_bands: torch.Tensor, spot: torch.Tensor) -> torch.Tensor:
    """q (N, dim) of each image's queries in turn: grid_sample of its band (border padding) at
    the spots (y, x) in band pixels."""
    images, h, w, dim = q_bands.shape
    y, x = spot.view(images, -1, 2).unbind(-1)
    grid = torch.stack([(2 * x + 1) / w - 1, (2 * y + 1) / h - 1], -1)[:, None]  # (B, 1, n, 2)
    bands = q_bands.permute(0, 3, 1, 2)
    q = F.grid_sample(bands, grid, mode="bilinear", padding_mode="border", align_corners=False)
    return q[:, :, 0].transpose(1, 2).reshape(-1, dim)


@pytest.mark.parametrize(("images", "per_image"), [(1, 1), (1, 37), (2, 3 * QUERY_BLOCK + 5)])
@torch.no_grad()
def test_loops_equal_the_torch_ops(images, per_image) -> None:
    """Spots anywhere in the band, its edges and corners included (where grid_sample's border
    padding gives the edge pixel its whole weight)."""
    torch.manual_seed(per_image)
    heads, dh, g2, rows, h, w = 8, 4, 9, 50, 5, 7
    n = images * per_image
    k_table, v_table = torch.randn(rows, heads * dh), torch.randn(rows, heads * dh)
    index = torch.randint(0, rows, (n, g2))
    q_bands = torch.randn(images, h, w, heads * dh)
    spot = torch.rand(n, 2) * torch.tensor([h - 1.0, w - 1.0])
    corners = torch.tensor([[0.0, 0.0], [h - 1.0, w - 1.0], [h - 1.0, 2.5], [1.5, w - 1.0]])
    spot[: min(n, 4)] = corners[: min(n, 4)]
    position = torch.randn(n, g2, heads)
    got = attend(k_table, v_table, index, q_bands, spot, position)
    assert got.shape == (n, g2 * heads * dh)
    q = sampled(q_bands, spot).view(n, heads, dh)
    torch.testing.assert_close(got, plain(k_table, v_table, index, q, position), atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_clit_tiers_decode_alike_through_the_loops_and_the_torch_ops() -> None:
    """The FLOP counter's dispatch mode sends the attention through the torch ops. The shipped
    weights: a fresh model's attention is nearly uniform, so it hardly depends on q. Two
    images: each image's queries sample q from its own band."""
    torch.manual_seed(4)
    model = registry.load("clit")
    lr = torch.rand(2, 3, 13, 17)
    for tier in model.tiers():
        fast = model.upscale(lr, (30, 41), tier)
        with counting():
            reference = model.upscale(lr, (30, 41), tier)
        torch.testing.assert_close(fast, reference, atol=1e-5, rtol=1e-5)
