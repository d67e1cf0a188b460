"""The checkpoints committed in models/checkpoints: each verifies, loads and serves every tier.

Quality and speed are measurements (models.evaluate, models.bench, recorded in the manifests), not
assertions; what is asserted here is that what ships is usable and described consistently.
"""

from __future__ import annotations

import math

import pytest
import torch

from models import registry
from models.checkpoint import CHECKPOINT_DIR, read_manifest

SHIPPED = sorted(p.stem for p in CHECKPOINT_DIR.glob("*.json"))


def test_there_are_shipped_checkpoints() -> None:
    assert SHIPPED, f"no manifest in {CHECKPOINT_DIR}"
    assert set(SHIPPED) <= set(registry.available())


@pytest.mark.parametrize("method", SHIPPED)
@torch.no_grad()
def test_shipped_checkpoint_loads_and_runs_every_tier(method: str) -> None:
    manifest = read_manifest(method)
    model = registry.load(method, device="cpu")
    tiers = model.tiers()
    assert [t["name"] for t in manifest["tiers"]] == [t.name for t in tiers]
    training = manifest["training"]
    # Trained weights, or an average (models.average) of runs that each trained.
    assert training["steps"] > 0 or all(run["steps"] > 0 for run in training["averaged_from"])
    lr = torch.rand(1, 3, 12, 10, generator=torch.Generator().manual_seed(0))
    for tier in tiers:
        out = model.upscale(lr, (25, 17), tier)
        assert out.shape == (1, 3, 25, 17)
        assert torch.isfinite(out).all() and out.min() >= 0.0 and out.max() <= 1.0
    for entry in manifest["tiers"]:
        for by_scale in entry["psnr_y"].values():
            assert all(math.isfinite(v) and v > 0 for v in by_scale.values())


@pytest.mark.parametrize("method", SHIPPED)
def test_manifest_costs_are_the_models_current_mac_count(method: str) -> None:
    """The controller reads tier costs from the manifest: they must follow any change to the code."""
    from models.export import COST_LR_SIDE

    manifest = read_manifest(method)
    model = registry.load(method, device="cpu")
    for entry, tier in zip(manifest["tiers"], model.tiers(), strict=True):
        for scale, macs in entry["macs_per_output_pixel"].items():
            assert macs == round(model.macs_per_output_pixel(tier, float(scale), COST_LR_SIDE)), (
                tier.name,
                scale,
            )
