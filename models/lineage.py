"""How a set of weights was trained: a training run's record, following its --init chain back.

A run's safetensors metadata holds its own settings; the chain before it is taken once, when the
run starts from `--init` weights, and stored with the run (`init_training`). Read later instead,
from whatever sits at the init path then, a chain goes wrong as soon as that path changes: a run
started from the shipped checkpoint and exported after its own descendant was shipped there
would list that descendant as its parent.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

from safetensors import safe_open


def code_version() -> str | None:
    """The commit the run's code came from ("+dirty" with local edits), so that a manifest says
    which knob-sampling rules trained it; None outside a git checkout."""
    here = str(Path(__file__).resolve().parent)

    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", here, *args], capture_output=True, text=True, check=True).stdout

    try:
        git("ls-files", "--error-unmatch", Path(__file__).name)  # this file is the checkout's, not a copy
        commit, dirty = git("rev-parse", "--short", "HEAD").strip(), git("status", "--porcelain", "--", ".")
    except (OSError, subprocess.CalledProcessError):
        return None
    return commit + ("+dirty" if dirty.strip() else "")


def run_metadata(run: Path) -> dict[str, Any]:
    with safe_open(str(run / "model.safetensors"), "pt") as f:
        return json.loads((f.metadata() or {}).get("train", "{}"))


def training_record(run: Path) -> dict[str, Any]:
    """How the run was trained, following its --init chain back to the shared trunk."""
    meta = run_metadata(run)
    record = {
        "steps": meta.get("step"),
        "minutes": round(meta.get("elapsed_s", 0) / 60, 1),
        "hardware": meta.get("device"),
        "data": meta.get("data"),
        "images": meta.get("images"),
        "config": meta.get("config"),
        "richest_tier_only": meta.get("richest_only", False),
    }
    if "seed" in meta:
        record["seed"] = meta["seed"]
    if meta.get("code"):
        record["code"] = meta["code"]
    if meta.get("averaged"):
        record["averaged_from"] = meta["averaged"]
    if meta.get("init_training"):
        record["initialised_from"] = meta["init_training"]
    elif meta.get("init"):  # runs started before the chain was stored with them
        record["initialised_from"] = init_record(Path(meta["init"]))
    return record


def init_record(weights: Path) -> dict[str, Any] | None:
    """The lineage of the weights a run starts from: a training run's folder, or a shipped
    checkpoint whose manifest (beside it) holds its chain, since run folders do not last.
    None when neither says anything (weights from elsewhere)."""
    if (weights.parent / "model.safetensors").is_file():
        return training_record(weights.parent)
    manifest = weights.with_suffix(".json")
    if manifest.is_file():
        return json.loads(manifest.read_text()).get("training")
    return None


def chain_length(record: dict[str, Any] | None) -> int:
    """How many runs lead to these weights along the longest path (0 for None: weights from
    nowhere known); an average counts as one step after the longest of the runs it averages."""
    if not record:
        return 0
    parents = record.get("averaged_from") or [record.get("initialised_from")]
    return 1 + max(chain_length(parent) for parent in parents)
