"""GET /models: the methods, their tiers, and what each tier's manifest measured (quality, cost)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends
from pydantic import BaseModel, Field

from models import registry
from models.manifest import tier_entry
from service.api.deps import get_runtime
from service.runtime import Runtime

router = APIRouter(tags=["models"])


class TierInfo(BaseModel):
    name: str
    index: int = Field(description="Position from cheapest (0) to richest.")
    knob: str = Field(description="The method's own cost/quality knob at this tier.")
    params: int = Field(description="Parameters the tier uses.")
    macs_per_output_pixel: dict[str, float] = Field(default_factory=dict, description="By scale (manifest).")
    cpu_latency_ms: dict[str, float] = Field(
        default_factory=dict, description="128×128 input, by scale (manifest)."
    )
    psnr_y: dict[str, dict[str, float]] = Field(default_factory=dict, description="dB by dataset and scale.")
    seconds_per_gmac: float = Field(description="This server's latency model for the tier, now.")
    calibrated: bool = Field(description="Whether seconds_per_gmac was measured here (warm-up).")


class MethodInfo(BaseModel):
    name: str
    loaded: bool
    error: str | None = None
    sha256: str | None = None
    training: dict[str, Any] | None = None
    bicubic_psnr_y: dict[str, dict[str, float]] = Field(default_factory=dict)
    tiers: list[TierInfo] = Field(default_factory=list)


class ModelsResponse(BaseModel):
    policy: str
    device: str
    workers: int
    state: str
    methods: list[MethodInfo]


def _tier_info(runtime: Runtime, method: str, manifest: dict[str, Any], tier: Any) -> TierInfo:
    try:
        entry = tier_entry(manifest, tier.name)
    except KeyError:
        entry = {}
    key = (method, tier.name)
    return TierInfo(
        name=tier.name,
        index=tier.index,
        knob=tier.knob_label,
        params=tier.params,
        macs_per_output_pixel=entry.get("macs_per_output_pixel", {}),
        cpu_latency_ms=entry.get("cpu_latency_ms", {}),
        psnr_y=entry.get("psnr_y", {}),
        seconds_per_gmac=runtime.latency.get(key),
        calibrated=runtime.latency.calibrated(key),
    )


@router.get("/models", summary="Methods, tiers, and each tier's measured quality and cost")
async def list_models(runtime: Annotated[Runtime, Depends(get_runtime)]) -> ModelsResponse:
    methods = []
    for name in registry.available():
        loaded = runtime.methods.get(name)
        if loaded is None:
            if name in runtime.failures:
                methods.append(MethodInfo(name=name, loaded=False, error=runtime.failures[name]))
            continue
        manifest = loaded.manifest
        methods.append(
            MethodInfo(
                name=name,
                loaded=True,
                sha256=manifest.get("sha256"),
                training=manifest.get("training"),
                bicubic_psnr_y=manifest.get("bicubic_psnr_y", {}),
                tiers=[_tier_info(runtime, name, manifest, t) for t in loaded.tiers],
            )
        )
    return ModelsResponse(
        policy=str(runtime.policy),
        device=runtime.device,
        workers=runtime.pool.workers,
        state=runtime.state,
        methods=methods,
    )
