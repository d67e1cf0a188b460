"""Reading image folders into tensors (any PNG/JPEG/WebP/BMP, RGB or greyscale), and a synthetic
photograph for timing runs that must not depend on a dataset."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff"}


def list_images(folder: str | Path) -> list[Path]:
    """Every image file under `folder`, sorted for reproducibility."""
    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(f"no such image folder: {root}")
    return sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def open_rgb(path: str | Path) -> Image.Image:
    """The image as 8-bit RGB, EXIF orientation applied."""
    with Image.open(path) as im:
        return ImageOps.exif_transpose(im).convert("RGB")


def to_tensor(image: Image.Image) -> torch.Tensor:
    """uint8 (3, H, W) tensor of an RGB PIL image."""
    return torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1).contiguous()


def to_image(tensor: torch.Tensor) -> Image.Image:
    """RGB PIL image of a (3, H, W) float tensor in [0, 1], rounded like a saved PNG."""
    array = (tensor.detach().clamp(0, 1) * 255).round().byte().permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(array, "RGB")


def synthetic_photo(height: int, width: int, seed: int = 0, slope: float = 1.2) -> torch.Tensor:
    """A deterministic stand-in for a photograph, (1, 3, H, W) in [0, 1], for timing runs.

    Uniform noise is a poor timing input where cost depends on content: MoEISR's mapper sends far
    more of it to heavy experts than it does a photograph. This image has what photographs have
    and noise lacks: an amplitude spectrum falling as 1/f^slope (natural images average a slope
    near 1.2), channels that mostly share one luminance field, and flat-coloured shapes with hard
    edges. On the shipped MoEISR it draws a share of the heavy experts close to that of B100 and
    Set14 crops (models/README.md gives the figures).
    """
    g = torch.Generator().manual_seed(seed)
    fy = torch.fft.fftfreq(height)[:, None]
    fx = torch.fft.rfftfreq(width)[None, :]
    f = torch.sqrt(fx**2 + fy**2)
    amplitude = torch.where(f > 0, f.clamp_min(1e-6) ** -slope, torch.zeros(()))

    def field() -> torch.Tensor:
        phase = torch.rand(f.shape, generator=g) * (2 * math.pi)
        x = torch.fft.irfft2(torch.polar(amplitude, phase), s=(height, width))
        spread = x.std() if x.numel() > 1 else x.new_ones(())  # a 1×1 field is all zeros
        return x / spread.clamp_min(1e-12)

    lum, c1, c2 = field(), field(), field()
    image = torch.stack([lum + 0.3 * c1, lum - 0.15 * c1 + 0.25 * c2, lum - 0.3 * c2]) * 0.15 + 0.45
    yy = torch.arange(height, dtype=torch.float32)[:, None]
    xx = torch.arange(width, dtype=torch.float32)[None, :]
    for _ in range(12):
        cy, cx = torch.rand(2, generator=g) * torch.tensor([height, width])
        r = (0.05 + 0.2 * torch.rand(1, generator=g)) * min(height, width)
        colour = torch.rand(3, 1, 1, generator=g)
        if torch.rand(1, generator=g) < 0.5:
            mask = (yy - cy) ** 2 + (xx - cx) ** 2 < r**2
        else:
            mask = ((yy - cy).abs() < r) & ((xx - cx).abs() < 0.6 * r)
        image = torch.where(mask, 0.1 * image + 0.9 * colour, image)
    return image.clamp(0, 1).unsqueeze(0)
