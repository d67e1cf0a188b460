"""Shared fixtures: untrained models are built once per session (construction costs ~1 s each)."""

from __future__ import annotations

import pytest
import torch

from models import registry


@pytest.fixture(scope="session")
def built_models() -> dict:
    torch.manual_seed(0)
    return {name: registry.build(name).eval() for name in registry.available()}


@pytest.fixture
def lr_image() -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    return torch.rand(1, 3, 11, 14, generator=g)
