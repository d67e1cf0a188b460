"""What the load generator sends: a mix of real benchmark images, and when it sends them.

Each request is an HR benchmark image cropped to a target output size, made a multiple of the
scale and bicubic-downscaled with the `models.quality` helpers (the protocol of `models.evaluate`),
so a response can be scored against the exact HR pixels it should reproduce. The service is asked
for that HR size with `width`/`height`, so output and reference always have the same size.

Arrival times are a pure function of the load profile (rate per level, level duration), fixed
before the run starts: the generator never lets a response decide when the next request leaves.
"""

from __future__ import annotations

import io
import math
import random
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from models.images import list_images, open_rgb
from models.quality import bicubic_lr, crop_for_scale, psnr_y


@dataclass(frozen=True)
class RequestSpec:
    """One kind of request in the mix: an LR PNG to upscale, and the HR it should come back as."""

    id: int
    source: str  # dataset/file of the HR original
    scale: float
    lr_png: bytes
    hr: Image.Image = field(repr=False, compare=False)

    @property
    def width(self) -> int:
        return self.hr.size[0]

    @property
    def height(self) -> int:
        return self.hr.size[1]

    def params(self, deadline_ms: float) -> dict[str, str]:
        return {"width": str(self.width), "height": str(self.height), "deadline_ms": f"{deadline_ms:g}"}

    def bicubic_psnr(self) -> float:
        """PSNR-Y of plain bicubic upscaling of the same LR: the floor any tier should beat."""
        lr = Image.open(io.BytesIO(self.lr_png)).convert("RGB")
        return psnr_y(lr.resize(self.hr.size, Image.BICUBIC), self.hr, self.scale)

    def psnr_of(self, body: bytes) -> float:
        """PSNR-Y of a response body against the HR original (same shave as models.evaluate)."""
        with Image.open(io.BytesIO(body)) as image:
            return psnr_y(image.convert("RGB"), self.hr, self.scale)


def _center_crop(image: Image.Image, side: int) -> Image.Image:
    w, h = image.size
    cw, ch = min(side, w), min(side, h)
    left, top = (w - cw) // 2, (h - ch) // 2
    return image.crop((left, top, left + cw, top + ch))


def build_mix(
    folders: list[Path], sides: list[int], scales: list[float], count: int, seed: int = 0
) -> list[RequestSpec]:
    """`count` requests drawn (seeded) from the images in `folders`, output sides and scales.

    Images are visited in a shuffled round-robin so every folder is represented; each gets an
    output side and a scale at random. Centre crops keep the content (not the padding) of the image.
    """
    paths = [p for folder in folders for p in list_images(folder)]
    if not paths:
        raise ValueError(f"no images under {', '.join(map(str, folders))}")
    rng = random.Random(seed)
    order = paths[:]
    rng.shuffle(order)
    mix = []
    for i in range(count):
        path = order[i % len(order)]
        side, scale = rng.choice(sides), rng.choice(scales)
        hr, lr_size = crop_for_scale(_center_crop(open_rgb(path), side), scale)
        buffer = io.BytesIO()
        bicubic_lr(hr, lr_size).save(buffer, format="PNG")
        mix.append(RequestSpec(i, f"{path.parent.name}/{path.name}", scale, buffer.getvalue(), hr))
    return mix


@dataclass(frozen=True)
class Level:
    """One step of the load profile: `multiplier` × base capacity for `seconds`."""

    multiplier: float
    rate: float  # requests per second
    seconds: float


@dataclass(frozen=True)
class Arrival:
    offset: float  # seconds after the profile starts
    level: int  # index into the profile
    spec: int  # index into the mix


def schedule(levels: list[Level], mix_size: int, seed: int = 0, poisson: bool = False) -> list[Arrival]:
    """Arrival times for back-to-back levels: evenly spaced (k6 constant-arrival-rate) or Poisson.

    A level's first arrival comes one gap after the level starts, so a level of rate r and length d
    holds floor(r·d) arrivals (no phase carries over). Which mix entry each arrival sends is drawn
    at random (seeded), so every policy sees the same sequence.
    """
    rng = random.Random(seed)
    arrivals: list[Arrival] = []
    start = 0.0
    for index, level in enumerate(levels):
        if level.rate > 0:
            t = 0.0
            while True:
                t += rng.expovariate(level.rate) if poisson else 1.0 / level.rate
                if t > level.seconds + 1e-9:
                    break
                arrivals.append(Arrival(start + t, index, rng.randrange(mix_size)))
        start += level.seconds
    return arrivals


def profile(capacity: float, multipliers: list[float], seconds: float) -> list[Level]:
    """Levels at multiples of a measured capacity (requests per second)."""
    if not math.isfinite(capacity) or capacity <= 0:
        raise ValueError(f"capacity must be a positive rate, got {capacity}")
    return [Level(m, m * capacity, seconds) for m in multipliers]
