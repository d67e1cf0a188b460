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

# Papers' PSNR-Y (dB) on the benchmarks for EDSR-baseline encoders trained on DIV2K:
# {label: {dataset: (x2, x3, x4)}}. MoEISR and CLIT publish no EDSR benchmark numbers; their
# closest published relatives are LIIF (MoEISR's backbone) and LTE (CLIT's DIV2K baseline).
PAPER_PSNR: dict[str, dict[str, tuple[float, float, float]]] = {
    "SSRNO-X (SSRNO Table 3)": {
        "set5": (38.11, 34.52, 32.33),
        "set14": (33.75, 30.45, 28.72),
        "b100": (32.24, 29.16, 27.64),
    },
    "SSRNO-S (SSRNO Table 3)": {
        "set5": (37.76, 34.09, 31.93),
        "set14": (33.40, 30.15, 28.42),
        "b100": (32.04, 28.98, 27.46),
    },
    "SRNO, AnySR full net ‡ (AnySR Table 2)": {
        "set5": (38.12, 34.51, 32.38),
        "set14": (33.81, 30.49, 28.78),
        "b100": (32.25, 29.17, 27.64),
    },
    "LIIF (AnySR Table 1; MoEISR's backbone)": {
        "set5": (37.99, 34.40, 32.24),
        "set14": (33.66, 30.34, 28.62),
        "b100": (32.17, 29.10, 27.60),
    },
    "LTE (SSRNO Table 3; CLIT's baseline)": {
        "set5": (38.03, 34.48, 32.27),
        "set14": (33.71, 30.41, 28.67),
        "b100": (32.22, 29.15, 27.63),
    },
}
# The reference each method's richest tier is held to (85 % of the paper's gain over bicubic).
REFERENCE = {
    "ssrno": "SSRNO-X (SSRNO Table 3)",
    "anysr": "SRNO, AnySR full net ‡ (AnySR Table 2)",
    "moeisr": "LIIF (AnySR Table 1; MoEISR's backbone)",
    "clit": "LTE (SSRNO Table 3; CLIT's baseline)",
}
# Bicubic under our protocol (Pillow LR, Y, ceil(scale) shave), from shared/datasets/README.md;
# the papers' gains are taken over these.
BICUBIC = {"set5": (33.67, 30.40, 28.43), "set14": (30.32, 27.63, 26.09), "b100": (29.56, 27.21, 25.96)}


def _cell(value: float | None) -> str:
    """A PSNR cell, or a dash when not measured."""
    return "–" if value is None else f"{value:.2f}"


def table(checkpoint_dir: str | None = None) -> str:
    header = ["method", "tier", "params", "MAC/px ×4", "CPU ms ×2 / ×4"]
    header += [f"{d} ×{s}" for d in DATASETS for s in SCALES]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    images: list[str] = []
    for method in registry.available():
        try:
            manifest = read_manifest(method, checkpoint_dir)
        except CheckpointError:
            lines.append(f"| {method} | (no shipped checkpoint) |" + " |" * (len(header) - 2))
            continue
        counts: dict[str, int] = {}
        for tier in manifest["tiers"]:
            lat = tier.get("cpu_latency_ms", {})
            row = [
                method,
                tier["name"],
                f"{tier['params'] / 1e6:.2f} M",
                f"{tier['macs_per_output_pixel']['4'] / 1e3:.0f} k",
                f"{lat.get('2', '–')} / {lat.get('4', '–')}",
            ]
            for d in DATASETS:
                for s in SCALES:
                    row.append(_cell(tier.get("psnr_y", {}).get(d, {}).get(s)))
                    n = tier.get("eval_images", {}).get(d, {}).get(s)
                    if n:
                        counts[d] = n
            lines.append("| " + " | ".join(row) + " |")
        # Each method's own bicubic: the sets' subsets (and so their bicubic PSNR) may differ.
        bicubic = manifest.get("bicubic_psnr_y", {})
        lines.append(
            f"| {method} | bicubic | | | | "
            + " | ".join(_cell(bicubic.get(d, {}).get(s)) for d in DATASETS for s in SCALES)
            + " |"
        )
        if counts:
            images.append(f"{method}: " + ", ".join(f"{d} {counts[d]}" for d in DATASETS if d in counts))
    for label, sets in PAPER_PSNR.items():
        cells = [_cell(sets[d][i]) for d in DATASETS for i in range(3)]
        lines.append(f"| paper: {label} | | | | | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append(
        "Images evaluated per set (a set evaluated in part: its first N images, for CPU time): "
        + ("; ".join(images) or "none yet")
        + "."
    )
    lines.append("")
    lines += gain_table(checkpoint_dir)
    return "\n".join(lines)


def gain_table(checkpoint_dir: str | None) -> list[str]:
    """Richest tier's gain over bicubic as a share of its paper reference's gain (target ≥ 85 %)."""
    header = ["method (richest tier)", "reference"] + [f"{d} ×{s}" for d in DATASETS for s in SCALES]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for method in registry.available():
        try:
            manifest = read_manifest(method, checkpoint_dir)
        except CheckpointError:
            continue
        richest = manifest["tiers"][-1]
        ref = PAPER_PSNR[REFERENCE[method]]
        cells = []
        for d in DATASETS:
            for i, s in enumerate(SCALES):
                ours = richest.get("psnr_y", {}).get(d, {}).get(s)
                base = manifest.get("bicubic_psnr_y", {}).get(d, {}).get(s)
                paper_gain = ref[d][i] - BICUBIC[d][i]
                cells.append(
                    "–" if ours is None or base is None else f"{100 * (ours - base) / paper_gain:.0f} %"
                )
        lines.append(f"| {method} ({richest['name']}) | {REFERENCE[method]} | " + " | ".join(cells) + " |")
    return lines


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
