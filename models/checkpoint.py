"""Checkpoints: safetensors weights plus a JSON manifest that is the single source of truth.

Shipped checkpoints live in `models/checkpoints/<method>.safetensors` (float16 weights, upcast to
float32 at load) next to `<method>.json`, which records the architecture config, the file's
SHA-256, how it was trained, and for every tier the measured quality and cost. The loader refuses
a missing or altered file with a clear message instead of serving garbage.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

CHECKPOINT_DIR = Path(__file__).parent / "checkpoints"


class CheckpointError(RuntimeError):
    """A shipped checkpoint is missing, corrupt or does not match its manifest."""


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def manifest_path(method: str, checkpoint_dir: str | Path | None = None) -> Path:
    return Path(checkpoint_dir or CHECKPOINT_DIR) / f"{method}.json"


def read_manifest(method: str, checkpoint_dir: str | Path | None = None) -> dict[str, Any]:
    path = manifest_path(method, checkpoint_dir)
    if not path.is_file():
        raise CheckpointError(f"no manifest for {method!r} at {path}; train and export it first")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"manifest {path} is not valid JSON: {exc}") from exc


def write_manifest(manifest: dict[str, Any], checkpoint_dir: str | Path | None = None) -> Path:
    path = manifest_path(manifest["method"], checkpoint_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(manifest, indent=2, sort_keys=False) + "\n")
    return path


def export_weights(model: torch.nn.Module, path: Path) -> str:
    """Write float16 weights for shipping; returns the file's SHA-256."""
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu", torch.float16).contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(path))
    return sha256_of(path)


def load_model(method: str, device: torch.device, checkpoint_dir: str | Path | None = None):
    """Build `method` from its manifest, verify and load the weights, return it in eval mode."""
    from models.registry import build

    manifest = read_manifest(method, checkpoint_dir)
    weights = manifest_path(method, checkpoint_dir).parent / manifest["file"]
    if not weights.is_file():
        raise CheckpointError(f"checkpoint file {weights} for {method!r} is missing")
    actual = sha256_of(weights)
    if actual != manifest["sha256"]:
        raise CheckpointError(
            f"checkpoint {weights} is corrupt or not the one its manifest describes "
            f"(sha256 {actual[:12]}…, expected {manifest['sha256'][:12]}…)"
        )
    model = build(method, **manifest.get("config", {}))
    try:
        state = {k: v.float() for k, v in load_file(str(weights)).items()}
        model.load_state_dict(state)
    except Exception as exc:  # safetensors header errors, shape mismatches
        raise CheckpointError(f"checkpoint {weights} cannot be loaded into {method!r}: {exc}") from exc
    model.manifest = manifest
    return model.to(device).eval()
