"""Training pairs: random HR crops at a random scale, their bicubic LR, and random query pixels.

Everything happens on the training device (the images live there as uint8), so a GPU is never
starved by a CPU data loader. LR patches come from antialiased bicubic resizing, which matches
Pillow's `Image.resize(BICUBIC)` used by the evaluation protocol.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class Batch:
    lr: torch.Tensor  # (B, 3, P, P) normalised to [-1, 1]
    coord: torch.Tensor  # (B, Q, 2) query coordinates in the HR crop
    target: torch.Tensor  # (B, Q, 3) normalised HR values at the queries
    out_size: tuple[int, int]  # HR crop size
    scale: float


class PatchSampler:
    """One scale per batch (as SRNO/AnySR train), s ~ U(scale_min, scale_max)."""

    def __init__(
        self,
        images: list[torch.Tensor],
        patch: int,
        queries: int,
        batch: int,
        scale_range: tuple[float, float] = (1.0, 4.0),
        seed: int = 0,
    ) -> None:
        if not images:
            raise ValueError("no training images")
        self.images, self.patch, self.queries, self.batch = images, patch, queries, batch
        self.scale_range = scale_range
        self.sides = [min(im.shape[-2:]) for im in images]
        self.rng = random.Random(seed)
        self.gen = torch.Generator(device=images[0].device)
        self.gen.manual_seed(seed)

    def state(self) -> dict:
        """Both generators (crops and query pixels), as JSON-friendly lists."""
        return {"rng": self.rng.getstate(), "gen": self.gen.get_state().tolist()}

    def set_state(self, state: dict) -> None:
        rng = state["rng"]
        self.rng.setstate((rng[0], tuple(rng[1]), rng[2]))
        if "gen" in state:  # runs saved before it was kept restart their query draws
            self.gen.set_state(torch.tensor(state["gen"], dtype=torch.uint8))

    def sample(self) -> Batch:
        rng, p = self.rng, self.patch
        largest = max(self.sides)
        scale = rng.uniform(*self.scale_range)
        crop = round(p * scale)
        if crop > largest:
            crop, scale = largest, largest / p
        eligible = [i for i, s in enumerate(self.sides) if s >= crop]
        crops = []
        for _ in range(self.batch):
            im = self.images[rng.choice(eligible)]
            y = rng.randint(0, im.shape[1] - crop)
            x = rng.randint(0, im.shape[2] - crop)
            c = im[:, y : y + crop, x : x + crop]
            if rng.random() < 0.5:
                c = c.flip(-1)
            if rng.random() < 0.5:
                c = c.flip(-2)
            if rng.random() < 0.5:
                c = c.transpose(-1, -2)
            crops.append(c)
        hr = torch.stack(crops).float() / 255
        lr = F.interpolate(hr, size=(p, p), mode="bicubic", antialias=True, align_corners=False).clamp(0, 1)
        q = min(self.queries, crop * crop)
        idx = torch.rand(self.batch, crop * crop, generator=self.gen, device=hr.device).argsort(1)[:, :q]
        ys = -1 + (2 * torch.div(idx, crop, rounding_mode="floor").float() + 1) / crop
        xs = -1 + (2 * (idx % crop).float() + 1) / crop
        target = torch.gather(hr.flatten(2), 2, idx.unsqueeze(1).expand(-1, 3, -1)).transpose(1, 2)
        return Batch(
            lr=(lr - 0.5) / 0.5,
            coord=torch.stack([ys, xs], -1),
            target=(target - 0.5) / 0.5,
            out_size=(crop, crop),
            scale=scale,
        )
