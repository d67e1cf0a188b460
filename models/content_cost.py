"""`python -m models.content_cost`: how much of its MAC cap a content-routed tier spends, by input.

MoEISR's cost depends on the picture: its mapper sends busy regions to heavy experts. The bench
and the service's warm-up time tiers on `synthetic_photo`, not on uniform noise, because noise
routes far heavier than photographs do. This measures that claim: for each tier, the MACs the
routed call did over the tier's cap, on noise, on synthetic photos and on real crops (the LR
being the top-left `--size` square of each HR image's ×2 LR as `models.quality` makes it for
evaluation), and writes JSON.

    python -m models.content_cost --data ../shared/datasets/bench/set14 ../shared/datasets/bench/b100
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch

from models import registry
from models.images import list_images, open_rgb, synthetic_photo, to_tensor
from models.quality import bicubic_lr, crop_for_scale


def real_crops(folders: list[str], side: int, limit: int | None) -> list[torch.Tensor]:
    """(1, 3, side, side) LR crops of every image large enough, in [0, 1]."""
    crops = []
    for folder in folders:
        for path in list_images(folder)[:limit]:
            image = bicubic_lr(*crop_for_scale(open_rgb(path), 2))  # the evaluation's ×2 LR
            if min(image.size) >= side:
                crops.append(to_tensor(image)[None, :, :side, :side].float() / 255)
    return crops


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--method", default="moeisr", choices=registry.available())
    ap.add_argument("--data", nargs="+", required=True, help="folders of HR images")
    ap.add_argument("--limit", type=int, default=None, help="first N images of each folder")
    ap.add_argument("--size", type=int, default=128, help="side of the square LR input")
    ap.add_argument("--scale", type=float, default=4.0)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--json", default="runs/content-cost.json")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = registry.load(args.method)
    side, out = args.size, (round(args.size * args.scale),) * 2
    tiers = model.tiers()

    caps = [model.macs(t, (side, side), out) for t in tiers]

    def shares(lr: torch.Tensor) -> list[float]:
        return [model.macs_done(lr, out, t) / cap for t, cap in zip(tiers, caps, strict=True)]

    crops = real_crops(args.data, side, args.limit)
    if not crops:
        ap.error(f"no image in {args.data} is {2 * side} px or more on its shorter side")
    inputs = {
        "uniform noise": [shares(torch.rand(1, 3, side, side))],
        "synthetic photo (seeds 0-2)": [shares(synthetic_photo(side, side, seed)) for seed in range(3)],
        f"real crops ({len(crops)})": [shares(c) for c in crops],
    }
    rows = []
    for name, per_input in inputs.items():
        for i, tier in enumerate(tiers):
            column = [s[i] for s in per_input]
            rows.append(
                {
                    "input": name,
                    "tier": tier.name,
                    "mean": statistics.mean(column),
                    "min": min(column),
                    "max": max(column),
                }
            )
    print(f"{args.method} ×{args.scale:g}, {side}² LR: MACs done / the tier's cap (mean, min–max)")
    print(f"{'input':30s} " + " ".join(f"{t.name:>16s}" for t in tiers))
    for name in inputs:
        cells = [r for r in rows if r["input"] == name]
        print(f"{name:30s} " + " ".join(f"{r['mean']:5.2f} ({r['min']:.2f}–{r['max']:.2f})" for r in cells))
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    result = {"method": args.method, "scale": args.scale, "lr_size": side, "rows": rows}
    Path(args.json).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
