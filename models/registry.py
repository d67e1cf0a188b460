"""One discovery API for every method: `available()`, `build(name)`, `load(name, device=...)`.

Each method module registers its class with `@register("name")`; nothing else keeps the list.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from models.base import ScalableSR

_BUILDERS: dict[str, Callable[..., ScalableSR]] = {}
_METHOD_MODULES = ("models.ssrno", "models.anysr", "models.moeisr", "models.clit")


def register(name: str) -> Callable[[type], type]:
    """Class decorator that makes a method discoverable under `name`."""

    def wrap(cls: type) -> type:
        if name in _BUILDERS:
            raise ValueError(f"method {name!r} registered twice")
        cls.method = name
        _BUILDERS[name] = cls
        return cls

    return wrap


def _import_all() -> None:
    for module in _METHOD_MODULES:
        importlib.import_module(module)


def available() -> list[str]:
    """Names of every registered method, in the order of `_METHOD_MODULES` (then any others)."""
    _import_all()
    known = [m.rsplit(".", 1)[1] for m in _METHOD_MODULES]
    return [n for n in known if n in _BUILDERS] + sorted(n for n in _BUILDERS if n not in known)


def build(name: str, **config: Any) -> ScalableSR:
    """A freshly initialised (untrained) model of method `name`.

    Built outside inference mode even when called inside it: inference tensors have no version
    counter, which the derived-weight memo reads to notice weight updates.
    """
    _import_all()
    if name not in _BUILDERS:
        raise KeyError(f"unknown method {name!r}; available: {', '.join(_BUILDERS)}")
    with torch.inference_mode(False):
        return _BUILDERS[name](**config)


def load(name: str, device: str | torch.device = "cpu", checkpoint_dir: str | None = None) -> ScalableSR:
    """The shipped, hash-verified checkpoint of `name`, in eval mode on `device`."""
    from models.checkpoint import load_model

    with torch.inference_mode(False):  # as in `build`
        return load_model(name, device=torch.device(device), checkpoint_dir=checkpoint_dir)
