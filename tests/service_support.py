"""Shared helpers for the service tests: untrained checkpoints, a caching loader, a served app.

Checkpoints are real files (weights + manifests, hash-verified on load) built once per test
session in a temporary folder; their manifests carry synthetic but consistent quality and timing
so the controller's choices are predictable. Loaded models are cached across apps (loading is the
slow part) — the loader still goes through `models.registry.load` the first time.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import functools
import io
import shutil
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import torch
from fastapi import FastAPI
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from models import registry
from models.base import ScalableSR
from models.checkpoint import export_weights, write_manifest
from service.app import create_app
from service.runtime import Loader
from service.settings import Settings

# Synthetic quality: per-method offset (dB) and gain per tier step; a tier's prior latency is
# PRIOR_SECONDS_PER_GMAC for every tier, so predicted cost is proportional to MACs.
QUALITY_OFFSET = {"ssrno": 0.3, "anysr": 0.1, "moeisr": 0.2, "clit": 0.0}
TIER_STEP_DB = 0.25
BICUBIC = {"2": 31.0, "3": 28.0, "4": 26.0}
PRIOR_SECONDS_PER_GMAC = 0.1
FAST_METHODS = ["ssrno", "anysr"]  # enough for most API tests, and the cheapest to run


def synthetic_manifest(name: str, model: ScalableSR, sha256: str) -> dict[str, Any]:
    tiers = []
    for t in model.tiers():
        quality = 1.0 + QUALITY_OFFSET[name] + TIER_STEP_DB * t.index  # gain over bicubic, dB
        macs = {s: model.macs_per_output_pixel(t, float(s), lr_side=32) for s in BICUBIC}
        out_px = {s: round(128 * float(s)) ** 2 for s in BICUBIC}
        tiers.append(
            {
                "name": t.name,
                "index": t.index,
                "knob": t.knob_label,
                "params": t.params,
                "macs_per_output_pixel": macs,
                "cpu_latency_ms": {s: macs[s] * out_px[s] * PRIOR_SECONDS_PER_GMAC / 1e6 for s in BICUBIC},
                "psnr_y": {"Set5": {s: BICUBIC[s] + quality for s in BICUBIC}},
            }
        )
    return {
        "method": name,
        "file": f"{name}.safetensors",
        "sha256": sha256,
        "dtype": "float16",
        "config": {},
        "training": {"data": [], "steps": 0, "hardware": "none (untrained test checkpoint)"},
        "bicubic_psnr_y": {"Set5": dict(BICUBIC)},
        "tiers": tiers,
    }


@functools.cache
def checkpoint_dir() -> Path:
    """A folder with an untrained checkpoint and manifest for every registered method."""
    torch.set_num_threads(1)  # see make_settings
    folder = Path(tempfile.mkdtemp(prefix="elasticsr-test-checkpoints-"))
    atexit.register(shutil.rmtree, folder, True)
    for name in registry.available():
        torch.manual_seed(0)
        model = registry.build(name).eval()
        sha = export_weights(model, folder / f"{name}.safetensors")
        with torch.no_grad():
            write_manifest(synthetic_manifest(name, model, sha), folder)
    return folder


_LOADED: dict[tuple[str, str, str | None], ScalableSR] = {}


def caching_loader(name: str, device: str, checkpoint_dir: str | None) -> ScalableSR:
    """`models.registry.load`, once per (method, device, folder) per test session."""
    key = (name, device, checkpoint_dir)
    if key not in _LOADED:
        _LOADED[key] = registry.load(name, device=device, checkpoint_dir=checkpoint_dir)
    return _LOADED[key]


def make_settings(**overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "checkpoint_dir": checkpoint_dir(),
        "methods": FAST_METHODS,
        "warmup": False,
        "device": "cpu",
        # One intra-op thread: the test machine's cores are shared, and two spinning OpenMP
        # threads under contention turn SSRNO's 0.6 s tier set-up (SVDs) into 35 s.
        "torch_threads": 1,
    }
    values.update(overrides)
    return Settings(**values)


async def wait_started(app: FastAPI, timeout: float = 120.0) -> None:
    async def poll() -> None:
        while app.state.runtime.state in ("starting", "loading", "warming"):
            await asyncio.sleep(0.02)

    await asyncio.wait_for(poll(), timeout)


@contextlib.asynccontextmanager
async def served(
    settings: Settings | None = None, loader: Loader = caching_loader
) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    """An app with its lifespan running (models loaded) and an httpx client talking ASGI to it."""
    app = create_app(settings or make_settings(), loader=loader)
    async with app.router.lifespan_context(app):
        await wait_started(app)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            yield app, client


def image_bytes(width: int = 8, height: int = 8, mode: str = "RGB", fmt: str = "PNG", **save: Any) -> bytes:
    """A small noisy image in any Pillow mode and format."""
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8), "RGB")
    if mode == "I;16":
        image = Image.fromarray(rng.integers(0, 65536, (height, width), dtype=np.uint16))
    elif mode == "P":
        image = rgb.quantize(16)
    else:
        image = rgb.convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **save)
    return buffer.getvalue()


def decoded(content: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(content))
    image.load()
    return image


def metric(text: str, name: str, **labels: str) -> float:
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    raise KeyError(name)


def corrupt_png(width: int = 16, height: int = 16) -> bytes:
    """A PNG whose header is valid (so it is queued) and whose pixel data is garbage (so it fails)."""
    data = bytearray(image_bytes(width, height))
    start = data.index(b"IDAT") + 4
    data[start : start + 40] = bytes(range(40))
    return bytes(data)
