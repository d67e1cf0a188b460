"""`python -m models.export`: ship a training run as a checkpoint, and fold measurements into its manifest.

    python -m models.export --method ssrno --run runs/ssrno          # weights + manifest skeleton
    python -m models.export --method ssrno --eval eval.json --bench runs/bench.json   # add numbers

The weights are written first so that evaluation measures exactly the file that ships; the
measurements are then merged into the manifest (the weights' hash does not change).
"""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from models import registry
from models.checkpoint import CHECKPOINT_DIR, export_weights, read_manifest, write_manifest
from models.evaluate import first_image
from models.lineage import training_record

COST_SCALES = (2.0, 3.0, 4.0)
COST_LR_SIDE = 128


def _key(scale: float) -> str:
    return f"{scale:g}"


def export_run(method: str, run: Path, out: Path) -> dict[str, Any]:
    model = registry.build(method)
    model.load_state_dict({k: v.float() for k, v in load_file(str(run / "model.safetensors")).items()})
    model.eval()
    file = f"{method}.safetensors"
    sha = export_weights(model, out / file)
    manifest = {
        "method": method,
        "file": file,
        "sha256": sha,
        "dtype": "float16",
        "config": {},
        "parameters": sum(p.numel() for p in model.parameters()),
        "training": training_record(run) | {"host": f"{platform.machine()} {platform.processor()}".strip()},
        "bicubic_psnr_y": {},
        "tiers": [],
    }
    for tier in model.tiers():
        manifest["tiers"].append(
            {
                **tier.as_dict(),
                "macs_per_output_pixel": {
                    _key(s): round(model.macs_per_output_pixel(tier, s, COST_LR_SIDE)) for s in COST_SCALES
                },
                "cpu_latency_ms": {},
                "psnr_y": {},
            }
        )
    return manifest


def merge_eval(manifest: dict[str, Any], records: list[dict[str, Any]]) -> None:
    """PSNR per tier, set and scale. A manifest's set is its first N images (`eval_images`), so
    a piece that starts later (`models.evaluate --skip`) must be joined first."""
    tiers = {t["name"]: t for t in manifest["tiers"]}
    for r in records:
        if r["method"] != manifest["method"] or r["tier"] not in tiers:
            continue
        if first_image(r):
            raise ValueError(
                f"{r['dataset']} x{r['scale']:g} starts at image {first_image(r)}: "
                "join its pieces with models.combine_evals first"
            )
        scale = _key(r["scale"])
        tiers[r["tier"]]["psnr_y"].setdefault(r["dataset"], {})[scale] = r["psnr_y"]
        tiers[r["tier"]].setdefault("eval_images", {}).setdefault(r["dataset"], {})[scale] = r["images"]
        manifest["bicubic_psnr_y"].setdefault(r["dataset"], {})[scale] = r["bicubic_psnr_y"]


def merge_bench(manifest: dict[str, Any], bench: dict[str, Any]) -> None:
    """Latency per tier and scale, and the MAC count of the code that was timed."""
    tiers = {t["name"]: t for t in manifest["tiers"]}
    for row in bench["rows"]:
        if row["method"] == manifest["method"] and row["tier"] in tiers:
            tiers[row["tier"]]["cpu_latency_ms"][_key(row["scale"])] = round(row["latency_ms"], 1)
            if bench["lr_size"] == COST_LR_SIDE:
                tiers[row["tier"]]["macs_per_output_pixel"][_key(row["scale"])] = round(
                    row["macs_per_output_pixel"]
                )
    manifest["cpu_latency_measured"] = {
        "lr_size": bench["lr_size"],
        "threads": bench["threads"],
        "date": bench.get("date"),
        "cpu": bench.get("cpu"),  # benches before 2026-12-03 do not name it
        "matmul_peak_gflops": round(bench["matmul_peak_gflops"], 1),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--method", required=True, choices=registry.available())
    ap.add_argument("--run", default=None, help="training run folder to ship (writes weights + manifest)")
    ap.add_argument("--eval", nargs="*", default=[], help="models.evaluate JSON files to merge")
    ap.add_argument("--bench", default=None, help="models.bench JSON to merge (CPU latency)")
    ap.add_argument("--out", default=str(CHECKPOINT_DIR))
    args = ap.parse_args(argv)
    out = Path(args.out)
    torch.set_grad_enabled(False)
    manifest = export_run(args.method, Path(args.run), out) if args.run else read_manifest(args.method, out)
    for path in args.eval:
        try:
            merge_eval(manifest, json.loads(Path(path).read_text()))
        except ValueError as err:  # a piece of a set, not the set
            ap.error(f"{path}: {err}")
    if args.bench:
        merge_bench(manifest, json.loads(Path(args.bench).read_text()))
    print(f"wrote {write_manifest(manifest, out)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
