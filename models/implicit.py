"""Coordinates, cells and the local ensemble shared by every implicit decoder.

Conventions (LIIF lineage): pixel centres lie in [-1, 1]; index 0 of a coordinate is the row (y),
index 1 the column (x). Everything is computed by index arithmetic on the device of the inputs,
never with a hard-coded device.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import torch.nn.functional as F

# Scales beyond the training range see the cell of this scale (the cell clamp of LTE/SRNO).
MAX_TRAINED_SCALE = 4.0


def pixel_centres(n: int, device: torch.device | None = None) -> torch.Tensor:
    """Centres of `n` pixels spanning [-1, 1]."""
    return -1 + (2 * torch.arange(n, device=device, dtype=torch.float32) + 1) / n


def pixel_coords(size: tuple[int, int], idx: torch.Tensor) -> torch.Tensor:
    """Coordinates (N, 2) of the row-major pixels `idx` (N,) of an image of `size`."""
    h, w = size
    ys = -1 + (2 * torch.div(idx, w, rounding_mode="floor").float() + 1) / h
    xs = -1 + (2 * (idx % w).float() + 1) / w
    return torch.stack([ys, xs], dim=-1)


def spans(n: int, step: int) -> list[tuple[int, int]]:
    """[start, stop) of consecutive runs of `step` items covering [0, n), the last one shorter:
    the chunks, pieces and tiles that decoders take row-major queries in."""
    return [(start, min(n, start + step)) for start in range(0, n, step)]


def flat_coords(size: tuple[int, int], start: int, stop: int, device: torch.device) -> torch.Tensor:
    """Coordinates (stop-start, 2) of the row-major pixels [start, stop) of an image of `size`."""
    return pixel_coords(size, torch.arange(start, stop, device=device))


def relative_cell(out_size: tuple[int, int], grid_size: tuple[int, int], batch: int, device) -> torch.Tensor:
    """The output pixel size in units of grid pixels (×2), clamped to the trained scale range.

    Returns (batch, 2): 2 * grid / out per axis, never below 2 / MAX_TRAINED_SCALE.
    """
    cell = torch.tensor(
        [2 * grid_size[0] / out_size[0], 2 * grid_size[1] / out_size[1]], device=device, dtype=torch.float32
    )
    cell = cell.clamp(min=2 / MAX_TRAINED_SCALE)
    return cell.expand(batch, 2)


def nearest_index(coord: torch.Tensor, n: int) -> torch.Tensor:
    """Index of the grid pixel (of `n` along this axis) whose cell holds each coordinate."""
    return ((coord + 1) * (n / 2)).floor().long().clamp_(0, n - 1)


def _axis_neighbours(c: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Along one axis of `n` pixels, for coordinates c (B, Q): the indices (B, 2, Q) of the pixels
    half a cell before and after each, and the coordinate's offsets from their centres (one
    pixel = 2)."""
    index, rel = [], []
    for step in (-1, 1):
        i = nearest_index((c + step / n + 1e-6).clamp(-1 + 1e-6, 1 - 1e-6), n)
        index.append(i)
        rel.append((c - (-1 + (2 * i.float() + 1) / n)) * n)
    return torch.stack(index, 1), torch.stack(rel, 1)


def axis_neighbours(out: int, n: int, device: torch.device | None = None) -> tuple[torch.Tensor, ...]:
    """`_axis_neighbours` of the `out` pixel centres of an output axis over `n` LR pixels: indices
    and offsets (2, out). Row-major output pixels take their row's and column's entries, the same
    values `neighbour_grid` computes per query, for H + W rather than H·W coordinates.

    Shared, read-only tensors: made once per (out, n, device) and kept for the next image of
    that size. Made afresh they are some 30 small torch ops per axis, 0.3 ms per decode, which
    was a twentieth of MoEISR b0's decoder time at 128² × 2.
    """
    return _cached_axis_neighbours(out, n, None if device is None else torch.device(device))


@functools.lru_cache(maxsize=64)
def _cached_axis_neighbours(out: int, n: int, device: torch.device | None) -> tuple[torch.Tensor, ...]:
    with torch.inference_mode(False), torch.no_grad():  # plain tensors, whoever asks first
        index, rel = _axis_neighbours(pixel_centres(out, device)[None], n)
    return index[0], rel[0]


@dataclass(frozen=True)
class GridAxes:
    """The local ensemble of a whole output grid, axis by axis (`axis_neighbours`): each output
    row's two LR rows and offsets, each output column's two LR columns and offsets."""

    rows: torch.Tensor  # (2, H) LR row above / below each output row
    row_rel: torch.Tensor  # (2, H) the output row's offset from them (one pixel = 2)
    cols: torch.Tensor  # (2, W)
    col_rel: torch.Tensor  # (2, W)

    @classmethod
    def of(cls, out_size: tuple[int, int], grid_size: tuple[int, int], device=None) -> GridAxes:
        rows, row_rel = axis_neighbours(out_size[0], grid_size[0], device)
        cols, col_rel = axis_neighbours(out_size[1], grid_size[1], device)
        return cls(rows, row_rel, cols, col_rel)

    def band(self, out_width: int, start: int, stop: int) -> tuple[int, int]:
        """LR rows [lo, hi) that the row-major output pixels [start, stop) have as neighbours
        (`band_rows` of their neighbour indices)."""
        lines = self.rows[:, start // out_width : (stop - 1) // out_width + 1]
        return int(lines.min()), int(lines.max()) + 1


def neighbour_grid(
    coord: torch.Tensor, grid_size: tuple[int, int]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The local ensemble, stacked: the 4 grid pixels around each query (B, Q, 2) as flat
    indices (B, 4, Q), offsets (B, 4, Q, 2) and bilinear area weights (B, 4, Q).

    Each axis's two neighbours are found once and paired up by broadcasting (neighbour 2·i + j
    pairs row neighbour i with column neighbour j), not once per pair.
    """
    h, w = grid_size
    b, q = coord.shape[:2]
    iy, ry = _axis_neighbours(coord[..., 0], h)
    ix, rx = _axis_neighbours(coord[..., 1], w)
    index = (iy[:, :, None] * w + ix[:, None]).view(b, 4, q)
    shape = (b, 2, 2, q)
    rel = torch.stack([ry[:, :, None].expand(shape), rx[:, None].expand(shape)], -1).view(b, 4, q, 2)
    area = ((ry[:, :, None] * rx[:, None]).abs() + 1e-9).view(b, 4, q)
    total = area[:, 0] + area[:, 1] + area[:, 2] + area[:, 3]
    # Each neighbour is weighted by the area of the diagonally opposite one (bilinear weights).
    return index, rel, area.flip(1) / total[:, None]


def mix_neighbours(y: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Each query's local-ensemble mix (B, Q, C) of its four neighbours' predictions y
    (B, 4, Q, C) with `neighbour_grid`'s weights (B, 4, Q)."""
    return (y * weight.unsqueeze(-1)).sum(1)


def band_rows(index: torch.Tensor, width: int) -> tuple[int, int]:
    """Rows [lo, hi) of the grid (of `width` columns) that these flat neighbour indices lie in.

    Decoders that apply a per-pixel layer once per grid pixel instead of once per query (the
    LIIF trick) apply it only to this band, so the work and memory follow the chunk of queries.
    """
    lo = int(index.min()) // width
    hi = int(index.max()) // width + 1
    return lo, hi


@functools.lru_cache(maxsize=1024)
def chunked_band_pixels(out_size: tuple[int, int], grid: tuple[int, int], chunk: int) -> int:
    """Pixels of `band_rows` summed over the chunks of `chunk` row-major queries that rendering an
    `out_size` image decodes.

    Cost accounting calls this for every tier of every method on every request, so it is one
    vectorised pass over the chunks' first and last queries (which hold a chunk's lowest and
    highest neighbour rows), with the same arithmetic as decoding, and cached: it depends on
    sizes only, not on the tier.
    """
    total = out_size[0] * out_size[1]
    starts = torch.arange(0, total, chunk)
    lasts = (starts + chunk).clamp(max=total) - 1
    ends = pixel_coords(out_size, torch.cat([starts, lasts]))
    rows = torch.div(neighbour_grid(ends[None], grid)[0][0], grid[1], rounding_mode="floor")  # (4, N)
    first, last = rows[:, : len(starts)], rows[:, len(starts) :]
    lo = torch.minimum(first.min(0).values, last.min(0).values)
    hi = torch.maximum(first.max(0).values, last.max(0).values)
    return int((hi - lo + 1).sum()) * grid[1]


def gather_pixels(grid: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Values (B, Q, C) of a grid (B, C, h, w) at flat indices (B, Q)."""
    b, c = grid.shape[:2]
    flat = grid.reshape(b, c, -1)
    return torch.gather(flat, 2, index.unsqueeze(1).expand(b, c, index.shape[1])).transpose(1, 2)


def bilinear_at(image: torch.Tensor, coord: torch.Tensor) -> torch.Tensor:
    """Bilinear samples (B, Q, C) of `image` (B, C, h, w) at coordinates (B, Q, 2), border-padded."""
    grid = coord.flip(-1).unsqueeze(1)  # grid_sample wants (x, y)
    out = F.grid_sample(image, grid, mode="bilinear", padding_mode="border", align_corners=False)
    return out[:, :, 0, :].transpose(1, 2)
