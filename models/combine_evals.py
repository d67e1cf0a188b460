"""`python -m models.combine_evals`: join `models.evaluate` shards of one folder into whole-folder records.

A folder evaluated in pieces (`--limit 20`, then `--skip 20`; or shards run on several cores)
gives one record per piece and cell. PSNR is a mean over images, so the whole folder's is the
image-weighted mean of the pieces' (to within their rounding, 1e-4 dB). Only adjoining pieces
are joined (each starts where the one before ended), so an image counted twice or a gap is
refused, not averaged in.
"""

from __future__ import annotations

import argparse
import itertools
import json
from collections import defaultdict
from pathlib import Path

from models.evaluate import first_image, print_row, write_records

CELL = ("method", "tier", "dataset", "scale")


def _weighted_mean(parts: list[dict], key: str) -> float:
    return sum(r[key] * r["images"] for r in parts) / sum(r["images"] for r in parts)


def combine(records: list[dict]) -> list[dict]:
    """One record per (method, tier, dataset, scale) over the union of its pieces' images."""
    pieces: dict[tuple, list[dict]] = defaultdict(list)
    for r in records:
        pieces[tuple(r[k] for k in CELL)].append(r)
    combined = []
    for cell, parts in pieces.items():
        parts = sorted(parts, key=first_image)
        for before, after in itertools.pairwise(parts):
            expected = first_image(before) + before["images"]
            if first_image(after) != expected:
                raise ValueError(f"{cell}: a piece starts at image {first_image(after)}, not {expected}")
        combined.append(
            {
                **dict(zip(CELL, cell, strict=True)),
                "images": sum(r["images"] for r in parts),
                "first_image": first_image(parts[0]),
                "psnr_y": round(_weighted_mean(parts, "psnr_y"), 4),
                "bicubic_psnr_y": round(_weighted_mean(parts, "bicubic_psnr_y"), 4),
                "seconds": round(sum(r["seconds"] for r in parts), 4),
                "macs": round(_weighted_mean(parts, "macs")),
            }
        )
    return combined


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("parts", nargs="+", help="models.evaluate JSON files")
    ap.add_argument("--json", required=True, help="write the combined records here")
    args = ap.parse_args(argv)
    records = [r for path in args.parts for r in json.loads(Path(path).read_text())]
    try:
        combined = combine(records)
    except ValueError as err:
        ap.error(str(err))
    for r in combined:
        print_row(r)
    write_records(args.json, combined)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
