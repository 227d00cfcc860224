"""The model and everything it computes: `InkModule`, its settings groups; `components/`, `evaluation/` and
`prediction/` hold the rest, each with its own public API."""

from utils.lazy import lazy_getattr

# Public name -> the module defining it, imported on first use (`utils.lazy`).
_EXPORTS = {
    "InkLoss": "modules.losses",
    "InkModule": "modules.ink_module",
    "LossConfig": "modules.losses",
    "OptimConfig": "modules.optimization",
}

__all__ = sorted(_EXPORTS)
__getattr__ = lazy_getattr(__name__, _EXPORTS)
