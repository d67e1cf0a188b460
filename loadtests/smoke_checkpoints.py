"""`python -m loadtests.smoke_checkpoints --out runs/smoke-ckpt`: untrained checkpoints for smoke runs.

Random weights (seeded) with manifests whose PSNR numbers are *synthetic* — a fixed gain per
tier step over a fixed bicubic baseline — so the harness can be exercised end to end before
trained checkpoints exist. Tier costs are real (same networks), qualities are not: never report
numbers measured on these. The manifests say so in `training.hardware`.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch

from models import registry
from models.base import ScalableSR
from models.checkpoint import export_weights, write_manifest

BICUBIC_DB = {"2": 31.0, "3": 28.0, "4": 26.0}
BASE_GAIN_DB = 0.5
STEP_DB = 0.3  # synthetic gain per tier step


def synthetic_manifest(method: str, model: ScalableSR, sha256: str) -> dict[str, Any]:
    tiers = []
    for t in model.tiers():
        gain = BASE_GAIN_DB + STEP_DB * t.index
        tiers.append(
            {
                **t.as_dict(),
                "macs_per_output_pixel": {s: model.macs_per_output_pixel(t, float(s)) for s in BICUBIC_DB},
                "cpu_latency_ms": {},
                "psnr_y": {"synthetic": {s: db + gain for s, db in BICUBIC_DB.items()}},
            }
        )
    return {
        "method": method,
        "file": f"{method}.safetensors",
        "sha256": sha256,
        "dtype": "float16",
        "config": {},
        "training": {"data": [], "steps": 0, "hardware": "none: untrained smoke-test checkpoint"},
        "bicubic_psnr_y": {"synthetic": dict(BICUBIC_DB)},
        "tiers": tiers,
    }


def write(out: Path, methods: list[str], seed: int = 0) -> list[Path]:
    written = []
    for method in methods:
        torch.manual_seed(seed)
        model = registry.build(method).eval()
        sha = export_weights(model, out / f"{method}.safetensors")
        with torch.no_grad():
            written.append(write_manifest(synthetic_manifest(method, model, sha), out))
    return written


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--out", type=Path, required=True, help="folder to write (keep it git-ignored, e.g. runs/)"
    )
    ap.add_argument("--methods", default=",".join(registry.available()))
    args = ap.parse_args(argv)
    for path in write(args.out, [m for m in args.methods.split(",") if m]):
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
