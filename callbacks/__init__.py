"""Lightning callbacks, one per file: checkpoints, early stopping, EMA, Grad-CAM, validation images, prediction."""

from __future__ import annotations

import importlib
from typing import Any

# Public name -> the module defining it, imported on first use (PEP 562): importing one sub-module never
# pulls in the whole package (utils.checkpoints reads settings types without Lightning, for instance).
_EXPORTS = {
    "EvalImageLogger": "callbacks.eval_images",
    "GradCAMCallback": "callbacks.cam",
    "InkEMA": "callbacks.ema",
    "InkEarlyStopping": "callbacks.early_stopping",
    "InkPredictionWriter": "callbacks.prediction_writer",
    "LatestCheckpoint": "callbacks.latest_checkpoint",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
