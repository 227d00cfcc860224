"""The model and everything it computes: `InkModule`, its settings groups; `components/`, `evaluation/` and
`prediction/` hold the rest, each with its own public API."""

from __future__ import annotations

import importlib
from typing import Any

# Public name -> the module defining it, imported on first use (PEP 562): importing one sub-module never
# pulls in the whole package (utils.checkpoints reads settings types without Lightning, for instance).
_EXPORTS = {
    "InkLoss": "modules.losses",
    "InkModule": "modules.ink_module",
    "LossConfig": "modules.losses",
    "OptimConfig": "modules.optimization",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
