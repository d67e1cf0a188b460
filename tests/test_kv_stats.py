"""models.kv_stats: the compiled loop gives the k/v sums the torch ops give, and steps aside wherever
someone must see those ops (autograd, dispatch modes, other dtypes)."""

from __future__ import annotations

import pytest
import torch
from model_support import counting
from torch.utils.flop_counter import FlopCounterMode

from models import mlp, registry
from models.galerkin import LAYER_NORM_EPS
from models.kv_stats import head_sums
from models.loop_pool import can_run

HEADS = 16


def plain_sums(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor):
    """The statistics written out in float64: k̃, ṽ per head, their inverse RMS, the three sums."""
    b, n, _ = x.shape
    dh = weight.shape[0] // 2 // HEADS
    kv = (x.double() @ weight.double().t() + bias.double()).view(b, n, 2, HEADS, dh)
    r = (kv.square().mean(-1, keepdim=True) + LAYER_NORM_EPS).rsqrt()  # (B, N, 2, heads, 1)
    k, v, r_k, r_v = kv[:, :, 0], kv[:, :, 1], r[:, :, 0], r[:, :, 1]
    scaled = torch.einsum("bnhi,bnhj->bhij", k * r_k * r_v, v)
    return scaled, (k * r_k).sum(1), (v * r_v).sum(1)


@pytest.mark.parametrize("dh", [4, 6, 11, 16])
@pytest.mark.parametrize(("batch", "n"), [(1, 1), (2, 37), (1, 4096)])
@torch.no_grad()
def test_loop_equals_the_plain_sums(dh, batch, n) -> None:
    torch.manual_seed(dh * n)
    d = 48
    x = torch.randn(batch, n, d)
    weight, bias = torch.randn(2 * HEADS * dh, d) / d**0.5, torch.randn(2 * HEADS * dh)
    assert can_run(x, weight)
    got = head_sums(x, weight, bias, HEADS)
    want = plain_sums(x, weight, bias)
    for g, w in zip(got, want, strict=True):
        assert g.shape == w.shape
        torch.testing.assert_close(g.double(), w, atol=1e-4 * n**0.5, rtol=1e-4)


@pytest.mark.parametrize("onednn", [True, False])
@torch.no_grad()
def test_product_gives_new_values_of_a_tile_reused_in_place(monkeypatch, onednn) -> None:
    """The decoder's blocks write their output into their input's memory, and the next block's
    sums read it there: the product (oneDNN with the tile as its weight, or BLAS without oneDNN)
    must read the tile's values anew on every call, not reuse what it made of the last ones."""
    if not onednn:
        monkeypatch.setattr(mlp, "onednn_linear", lambda: None)
    elif mlp.onednn_linear() is None:
        pytest.skip("this torch build has no oneDNN linear")
    torch.manual_seed(3)
    x, weight, bias = torch.randn(1, 4096, 96), torch.randn(2 * HEADS * 6, 96) / 96**0.5, torch.randn(192)
    for step in range(3):
        if step:
            x.mul_(-0.5).add_(0.25)  # in place, as a block updates its tile
        for got, want in zip(head_sums(x, weight, bias, HEADS), plain_sums(x, weight, bias), strict=True):
            torch.testing.assert_close(got.double(), want, atol=1e-4 * 4096**0.5, rtol=1e-4)


def test_torch_ops_run_where_they_must_be_seen() -> None:
    x, weight = torch.randn(1, 10, 8), torch.randn(2 * HEADS * 4, 8)
    with torch.no_grad():
        assert can_run(x, weight)
        with counting():  # a dispatch mode must see every product
            assert not can_run(x, weight)
        assert not can_run(x.double(), weight.double())
    assert can_run(x, weight)  # autograd on, but nothing here requires grad
    assert not can_run(x, weight.requires_grad_())


@torch.no_grad()
@pytest.mark.parametrize("method", ["ssrno", "anysr"])
def test_galerkin_tiers_decode_alike_with_the_loop_and_as_torch_ops(method, lr_image) -> None:
    """Whole-model check, one chunk and several: the FLOP counter's dispatch mode sends every
    tile's statistics, and every chunk's lift (`models.lift_grid`), through the torch ops."""
    torch.manual_seed(5)
    model = registry.build(method).eval()
    for tier in model.tiers():
        for max_queries in (None, 700):
            kwargs = {} if max_queries is None else {"max_queries": max_queries}
            fused = model.upscale(lr_image, (45, 61), tier, **kwargs)
            with FlopCounterMode(display=False):
                plain = model.upscale(lr_image, (45, 61), tier, **kwargs)
            torch.testing.assert_close(fused, plain, atol=1e-5, rtol=1e-5)
