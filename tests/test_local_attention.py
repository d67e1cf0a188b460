"""models.local_attention: CLIT's compiled attention loops give what the torch ops give, and the
model decodes alike through either."""

from __future__ import annotations

import math

import pytest
import torch
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


@pytest.mark.parametrize("n", [1, 37, 3 * QUERY_BLOCK + 5])
@torch.no_grad()
def test_loops_equal_the_torch_ops(n) -> None:
    torch.manual_seed(n)
    heads, dh, g2, rows = 8, 16, 9, 50
    k_table, v_table = torch.randn(rows, heads * dh), torch.randn(rows, heads * dh)
    index = torch.randint(0, rows, (n, g2))
    q, position = torch.randn(n, heads, dh), torch.randn(n, g2, heads)
    got = attend(k_table, v_table, index, q, position)
    assert got.shape == (n, g2 * heads * dh)
    torch.testing.assert_close(got, plain(k_table, v_table, index, q, position), atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_clit_tiers_decode_alike_through_the_loops_and_the_torch_ops() -> None:
    """The FLOP counter's dispatch mode sends the attention through the torch ops."""
    torch.manual_seed(4)
    model = registry.build("clit").eval()
    lr = torch.rand(1, 3, 13, 17)
    for tier in model.tiers():
        fast = model.upscale(lr, (30, 41), tier)
        with counting():
            reference = model.upscale(lr, (30, 41), tier)
        torch.testing.assert_close(fast, reference, atol=1e-5, rtol=1e-5)
