"""The synthetic photograph the bench and warm-up time on: deterministic, photograph-like in its
spectrum, and routed by MoEISR's mapper more lightly than uniform noise (why it replaced noise)."""

import json

import pytest
import torch

from models import content_cost, registry
from models.images import synthetic_photo, to_image


def spectral_slope(image: torch.Tensor) -> float:
    """Least-squares slope of log radial mean amplitude against log frequency (mid band)."""
    grey = image[0].mean(0)
    amplitude = torch.fft.fftshift(torch.fft.fft2(grey - grey.mean())).abs()
    h, w = grey.shape
    yy, xx = torch.meshgrid(torch.arange(h) - h // 2, torch.arange(w) - w // 2, indexing="ij")
    radius = torch.sqrt(yy.float() ** 2 + xx.float() ** 2).round().long()
    bands = torch.arange(4, min(h, w) // 2)
    mean_amp = torch.stack([amplitude[radius == r].mean() for r in bands])
    x, y = bands.float().log(), mean_amp.log()
    return float(((x - x.mean()) * (y - y.mean())).sum() / ((x - x.mean()) ** 2).sum())


def test_synthetic_photo_is_deterministic_in_range_and_any_shape() -> None:
    a, b = synthetic_photo(37, 50, seed=3), synthetic_photo(37, 50, seed=3)
    assert a.shape == (1, 3, 37, 50) and torch.equal(a, b)
    assert a.min() >= 0 and a.max() <= 1 and a.std() > 0.05
    assert not torch.equal(synthetic_photo(37, 50, seed=4), a)
    for side in (1, 2):  # degenerate sizes stay finite
        assert torch.isfinite(synthetic_photo(side, side)).all()


def test_synthetic_photo_has_a_photographs_spectrum_and_noise_does_not() -> None:
    photo = spectral_slope(synthetic_photo(128, 128))
    noise = spectral_slope(torch.rand(1, 3, 128, 128))
    assert -1.6 < photo < -0.8, photo
    assert abs(noise) < 0.2, noise


def test_moeisr_routes_the_synthetic_photo_lighter_than_noise() -> None:
    torch.manual_seed(0)
    model = registry.load("moeisr")
    full = model.tiers()[-1]
    out = (192, 192)
    photo = model.macs_done(synthetic_photo(48, 48), out, full)
    noise = model.macs_done(torch.rand(1, 3, 48, 48), out, full)
    assert photo < 0.85 * noise, (photo, noise)


@pytest.mark.parametrize("method", ["moeisr", "ssrno"])
def test_content_cost_reports_every_tier_for_every_input(tmp_path, method: str) -> None:
    for seed in range(2):
        to_image(synthetic_photo(80, 96, seed=10 + seed)[0]).save(tmp_path / f"hr{seed}.png")
    out = tmp_path / "cost.json"
    assert (
        content_cost.main(
            [
                "--method",
                method,
                "--data",
                str(tmp_path),
                "--size",
                "24",
                "--scale",
                "2",
                "--threads",
                "1",
                "--json",
                str(out),
            ]
        )
        == 0
    )
    rows = json.loads(out.read_text())["rows"]
    tiers = [t.name for t in registry.build(method).tiers()]
    assert [r["tier"] for r in rows] == tiers * 3
    assert {r["input"] for r in rows} == {"uniform noise", "synthetic photo (seeds 0-2)", "real crops (2)"}
    for r in rows:
        assert 0 < r["min"] <= r["mean"] <= r["max"] <= 1 + 1e-9
    if method == "ssrno":  # not content-routed: every input costs exactly its cap
        assert all(abs(r["mean"] - 1) < 1e-9 for r in rows)
