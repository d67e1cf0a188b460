"""Tiers: the named points on a model's cost/quality knob.

A tier is plain data so the service can list it, log it and put it in headers without knowing
anything about the network behind it. The knob value is method-specific (ε, width, budget, stages).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Tier:
    """One runnable configuration of a scalable model, ordered cheapest → richest by `index`."""

    name: str
    index: int
    knob: Any
    knob_label: str
    params: int

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "index": self.index, "knob": self.knob_label, "params": self.params}
