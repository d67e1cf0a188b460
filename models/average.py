"""`python -m models.average`: the uniform average of sibling training runs, as a run folder.

    python -m models.average --method ssrno --runs runs/a runs/b --out runs/a+b

Runs started from the same weights (different seeds) stay in one basin, and their average
("model soup") usually scores above either; on CPU, where one more run gains about what the
runs differ by, averaging is the cheapest gain there is. The result is an ordinary run folder:
`models.export --run` ships it, `models.train --init` continues from it, and its lineage names
every run it averages.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from models import registry
from models.lineage import code_version, run_metadata, training_record


def average_weights(runs: list[Path]) -> dict[str, torch.Tensor]:
    """Every tensor averaged in float32; the runs must hold the same tensors with the same shapes."""
    total: dict[str, torch.Tensor] = {}
    for run in runs:
        weights = load_file(str(run / "model.safetensors"))
        if total and (
            weights.keys() != total.keys() or any(weights[k].shape != v.shape for k, v in total.items())
        ):
            raise ValueError(f"{run} does not hold the same tensors as {runs[0]}")
        for name, tensor in weights.items():
            total[name] = total.get(name, 0) + tensor.float()
    return {name: (tensor / len(runs)).contiguous() for name, tensor in total.items()}


def write_average(method: str, runs: list[Path], out: Path) -> Path:
    if len(runs) < 2:
        raise ValueError("averaging needs at least two runs")
    records = [training_record(run) for run in runs]
    for run in runs:
        found = run_metadata(run).get("method")
        if found != method:
            raise ValueError(f"{run} is a {found!r} run, not {method!r}")
    weights = average_weights(runs)
    registry.build(method).load_state_dict(weights)  # refuses tensors the method does not have
    first = records[0]
    meta = {
        "method": method,
        "step": 0,
        "elapsed_s": 0.0,
        "device": "cpu",
        "data": first.get("data"),
        "images": first.get("images"),
        "averaged": records,
        "code": code_version(),
    }
    out.mkdir(parents=True, exist_ok=True)
    path = out / "model.safetensors"
    save_file(weights, str(path), metadata={"train": json.dumps(meta)})
    return path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--method", required=True, choices=registry.available())
    ap.add_argument(
        "--runs", nargs="+", required=True, help="run folders to average (same method and shapes)"
    )
    ap.add_argument("--out", required=True, help="run folder to write")
    args = ap.parse_args(argv)
    try:
        path = write_average(args.method, [Path(r) for r in args.runs], Path(args.out))
    except ValueError as err:
        ap.error(str(err))
    print(f"wrote {path}: the average of {len(args.runs)} runs")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
