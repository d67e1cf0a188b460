"""The Galerkin decoders' lift: the per-LR-pixel table with merged offset columns (torch ops) and
the compiled loop over output rows (models.lift_grid) both give the plain concatenation's values."""

from __future__ import annotations

import pytest
import torch

from models import implicit
from models.galerkin import GalerkinDecoder
from models.implicit import GridAxes, flat_coords, gather_pixels, neighbour_grid, relative_cell
from models.lift_grid import lift_span

FEATURES, WIDTH = 8, 32


def decoder() -> GalerkinDecoder:
    torch.manual_seed(0)
    return GalerkinDecoder(feat_dim=FEATURES, width=WIDTH, heads=16, ffn=24, proj=16)


def plain_lift(dec: GalerkinDecoder, feat: torch.Tensor, coord: torch.Tensor, size) -> torch.Tensor:
    """The lift Linear on [each neighbour's (dy, dx), each neighbour's feature times its ensemble
    weight, the cell], concatenated per query in the order of its weight's columns."""
    b, q = coord.shape[:2]
    index, rel, weight = neighbour_grid(coord, feat.shape[-2:])  # (B, 4, Q), (B, 4, Q, 2), (B, 4, Q)
    feats = gather_pixels(feat, index.reshape(b, -1)).view(b, 4, q, -1) * weight[..., None]
    cell = relative_cell(size, feat.shape[-2:], b, coord.device)[:, None].expand(-1, q, -1)
    columns = [rel.permute(0, 2, 1, 3).reshape(b, q, 8), feats.permute(0, 2, 1, 3).reshape(b, q, -1), cell]
    return dec.lift(torch.cat(columns, -1))


@pytest.mark.parametrize("grad", [False, True])
def test_lift_queries_equals_the_plain_concatenation(grad) -> None:
    dec = decoder()
    feat = torch.randn(2, FEATURES, 7, 9)
    size = (23, 17)  # ×3.3 by ×1.9
    coord = flat_coords(size, 0, size[0] * size[1], feat.device).expand(2, -1, -1)
    with torch.no_grad():
        expected = plain_lift(dec, feat, coord, size)
    with torch.set_grad_enabled(grad):
        got = dec.lift_queries(dec.narrowed(dec.full_widths(), "slice"), feat, coord, size)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    ("batch", "lr", "size", "span"),
    [
        (1, (7, 9), (23, 17), (0, 23 * 17)),  # the whole image
        (2, (7, 9), (23, 17), (40, 301)),  # from mid-row to mid-row, two images
        (1, (5, 4), (150, 90), (0, 150 * 90)),  # ×30 by ×22.5, several blocks on the threads
        (3, (6, 8), (61, 100), (7, 61 * 100)),  # blocks of items cross from image to image
    ],
)
@torch.no_grad()
def test_the_loop_lifts_a_span_of_output_pixels_like_the_plain_concatenation(batch, lr, size, span) -> None:
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        dec = decoder()
        p = dec.narrowed(dec.full_widths(), "slice")
        feat = torch.randn(batch, FEATURES, *lr)
        axes = GridAxes.of(size, lr)
        band = axes.band(size[1], *span)
        table = dec.lift_table(p, feat, band)
        position = dec.lift_position(p, size, lr, feat.device)
        got = lift_span(table, band, axes, position, batch, lr[1], span)
    finally:
        torch.set_num_threads(before)
    coord = flat_coords(size, *span, feat.device).expand(batch, -1, -1)
    torch.testing.assert_close(got, plain_lift(dec, feat, coord, size), atol=1e-5, rtol=1e-5)


def test_grid_axes_are_made_once_per_size_and_are_plain_tensors() -> None:
    """The per-axis tables are kept per (output, LR) size: the next image of that size gets the
    same tensors, and tables first asked for under inference mode can still be used outside it."""
    implicit._cached_axis_neighbours.cache_clear()
    with torch.inference_mode():
        first = GridAxes.of((37, 53), (11, 14))
    again = GridAxes.of((37, 53), (11, 14))
    assert all(a is b for a, b in zip(vars(first).values(), vars(again).values(), strict=True))
    assert not any(t.is_inference() for t in vars(again).values())
    other = GridAxes.of((38, 53), (11, 14))
    assert other.rows.shape == (2, 38) and other.cols is again.cols
    coord = flat_coords((37, 53), 0, 37 * 53, torch.device("cpu"))[None]
    index, rel, _ = neighbour_grid(coord, (11, 14))  # the per-query values the tables stand for
    torch.testing.assert_close(again.rows[0].repeat_interleave(53), index[0, 0] // 14)
    torch.testing.assert_close(again.row_rel[0].repeat_interleave(53), rel[0, 0, :, 0])
