"""`python -m models.evaluate`: PSNR of every tier of a method on any folder of HR images.

For each image and scale: HR cropped to a multiple of the scale, LR by Pillow bicubic, the model's
output rounded to 8 bits (what a client receives), PSNR on Y with ceil(scale) pixels shaved,
and bicubic upscaling of the same LR as the baseline. Prints a table and writes JSON records.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

from models import registry
from models.allocator import retain_freed_memory
from models.images import list_images, open_rgb, to_image, to_tensor
from models.quality import bicubic_lr, crop_for_scale, psnr_y


def load_for_eval(method: str, weights: str | None, device: torch.device, checkpoint_dir: str | None = None):
    """The shipped checkpoint, or a model built fresh and loaded from a training run's weights."""
    if weights is None:
        return registry.load(method, device=device, checkpoint_dir=checkpoint_dir)
    model = registry.build(method)
    model.load_state_dict({k: v.float() for k, v in load_file(weights).items()})
    return model.to(device).eval()


def select_images(folder: str, skip: int = 0, limit: int | None = None) -> list[Path]:
    """The folder's images `skip` … `skip + limit` (sorted); an empty selection is an error."""
    paths = list_images(folder)[skip:][:limit]
    if not paths:
        raise ValueError(f"no images to evaluate in {folder} (skip {skip}, limit {limit})")
    return paths


def first_image(record: dict) -> int:
    """Where a record's images start in its folder (records from before --skip start at 0)."""
    return record.get("first_image", 0)


def evaluate(
    model, folders: list[str], scales: list[float], tiers, limit: int | None, device, skip: int = 0
) -> list[dict]:
    """Records per (folder, scale, tier) over the folder's images `skip` … `skip + limit`."""
    records = []
    for folder in folders:
        hrs = [open_rgb(p) for p in select_images(folder, skip, limit)]
        for scale in scales:
            pairs = []
            for hr in hrs:
                hr_c, lr_size = crop_for_scale(hr, scale)
                lr = bicubic_lr(hr_c, lr_size)
                pairs.append((hr_c, lr))
            bicubic = sum(psnr_y(lr.resize(hr.size, 3), hr, scale) for hr, lr in pairs) / len(pairs)
            for tier in tiers:
                total, seconds, macs = 0.0, 0.0, 0
                for hr, lr in pairs:
                    x = (to_tensor(lr).float() / 255).unsqueeze(0).to(device)
                    if device.type == "cuda":
                        torch.cuda.synchronize()
                    t0 = time.perf_counter()
                    sr = model.upscale(x, (hr.size[1], hr.size[0]), tier)
                    if device.type == "cuda":
                        torch.cuda.synchronize()
                    seconds += time.perf_counter() - t0
                    total += psnr_y(to_image(sr[0]), hr, scale)
                    macs += model.macs(tier, (lr.size[1], lr.size[0]), (hr.size[1], hr.size[0]))
                records.append(
                    {
                        "method": model.method,
                        "tier": tier.name,
                        "dataset": Path(folder).name,
                        "scale": scale,
                        "images": len(pairs),
                        "first_image": skip,
                        "psnr_y": round(total / len(pairs), 4),
                        "bicubic_psnr_y": round(bicubic, 4),
                        "seconds": round(seconds, 4),
                        "macs": macs // len(pairs),
                    }
                )
                print_row(records[-1])
    return records


def write_records(path: str, records: list[dict]) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(records, indent=1) + "\n")


def print_row(r: dict) -> None:
    print(
        f"{r['method']:8s} {r['tier']:8s} {r['dataset']:8s} x{r['scale']:<5g} n={r['images']:<4d} "
        f"PSNR-Y {r['psnr_y']:7.3f}  bicubic {r['bicubic_psnr_y']:7.3f}  "
        f"gain {r['psnr_y'] - r['bicubic_psnr_y']:+.3f}  {r['seconds']:8.2f}s  "
        f"{r['macs'] / 1e9:8.2f} GMAC/img",
        flush=True,
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--method", required=True, choices=registry.available())
    ap.add_argument("--tiers", default="all", help="'all' or comma-separated tier names")
    ap.add_argument("--data", nargs="+", required=True, help="folders of HR images")
    ap.add_argument("--scales", default="2,3,4")
    ap.add_argument("--json", default=None, help="write the records here")
    ap.add_argument("--limit", type=int, default=None, help="at most N images of each folder (after --skip)")
    ap.add_argument(
        "--skip",
        type=int,
        default=0,
        help="leave out each folder's first N images (a shard; models.combine_evals joins shards)",
    )
    ap.add_argument(
        "--weights", default=None, help="a training run's model.safetensors instead of the shipped one"
    )
    ap.add_argument("--checkpoint-dir", default=None, help="where shipped checkpoints live")
    ap.add_argument("--device", default=None)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args(argv)
    for folder in args.data:  # before loading a model: --skip past a folder's end is a usage error
        try:
            select_images(folder, args.skip, args.limit)
        except ValueError as err:
            ap.error(str(err))
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    retain_freed_memory()
    if args.threads:
        torch.set_num_threads(args.threads)
    model = load_for_eval(args.method, args.weights, device, args.checkpoint_dir)
    tiers = model.tiers() if args.tiers == "all" else [model.tier(t) for t in args.tiers.split(",")]
    scales = [float(s) for s in args.scales.split(",")]
    records = evaluate(model, args.data, scales, tiers, args.limit, device, args.skip)
    if args.json:
        write_records(args.json, records)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
