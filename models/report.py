"""`python -m models.report [--write models/README.md]`: the results table, generated from the manifests.

Every number in the table is read from a shipped manifest (measured by models.evaluate and
models.bench on the shipped weights) or, for the papers' rows, from `PAPER_PSNR` below with its
source; nothing is typed in by hand.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from models import registry
from models.checkpoint import CheckpointError, read_manifest

DATASETS = ("set5", "set14", "b100")
SCALES = ("2", "3", "4")
START, END = "<!-- results:start -->", "<!-- results:end -->"

# Papers' PSNR-Y (dB) for EDSR-baseline encoders trained on DIV2K: {label: {dataset: (x2, x3, x4)}}.
PAPER_PSNR: dict[str, dict[str, tuple[float | None, ...]]] = {
    "LIIF (LIIF paper; shared/datasets/README.md)": {
        "set5": (37.99, 34.40, 32.24), "set14": (33.66, 30.34, 28.62), "b100": (32.17, 29.10, 27.60),
    },
}


def _cell(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}"


def table(checkpoint_dir: str | None = None) -> str:
    header = ["method", "tier", "params", "MAC/px ×4", "CPU ms ×2 / ×4"]
    header += [f"{d} ×{s}" for d in DATASETS for s in SCALES]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    bicubic: dict[str, dict[str, float]] = {}
    images: dict[str, dict[str, int]] = {}
    for method in registry.available():
        try:
            manifest = read_manifest(method, checkpoint_dir)
        except CheckpointError:
            lines.append(f"| {method} | (no shipped checkpoint) |" + " |" * (len(header) - 2))
            continue
        for d, by_scale in manifest.get("bicubic_psnr_y", {}).items():
            bicubic.setdefault(d, {}).update(by_scale)
        for tier in manifest["tiers"]:
            lat = tier.get("cpu_latency_ms", {})
            row = [
                method, tier["name"], f"{tier['params'] / 1e6:.2f} M",
                f"{tier['macs_per_output_pixel']['4'] / 1e3:.0f} k",
                f"{lat.get('2', '–')} / {lat.get('4', '–')}",
            ]
            for d in DATASETS:
                for s in SCALES:
                    row.append(_cell(tier.get("psnr_y", {}).get(d, {}).get(s)))
                    n = tier.get("eval_images", {}).get(d, {}).get(s)
                    if n:
                        images.setdefault(d, {})[s] = n
            lines.append("| " + " | ".join(row) + " |")
    lines.append(
        "| bicubic | | | | | "
        + " | ".join(_cell(bicubic.get(d, {}).get(s)) for d in DATASETS for s in SCALES) + " |"
    )
    for label, sets in PAPER_PSNR.items():
        cells = [_cell(sets.get(d, (None,) * 3)[i]) for d in DATASETS for i in range(3)]
        lines.append(f"| paper: {label} | | | | | " + " | ".join(cells) + " |")
    counts = ", ".join(f"{d} {images[d].get('2', '?')}" for d in DATASETS if d in images)
    lines.append("")
    lines.append(f"Images evaluated per set: {counts or 'none yet'}.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--write", default=None, help="replace the table between the markers in this file")
    ap.add_argument("--checkpoint-dir", default=None)
    args = ap.parse_args(argv)
    text = table(args.checkpoint_dir)
    if args.write:
        path = Path(args.write)
        body = path.read_text()
        block = f"{START}\n{text}\n{END}"
        path.write_text(re.sub(re.escape(START) + ".*?" + re.escape(END), lambda _: block, body, flags=re.S))
    else:
        print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
