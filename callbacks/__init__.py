"""Lightning callbacks, one per file: checkpoints, early stopping, EMA, Grad-CAM, validation images, prediction."""

from utils.lazy import lazy_getattr

# Public name -> the module defining it, imported on first use (`utils.lazy`).
_EXPORTS = {
    "EvalImageLogger": "callbacks.eval_images",
    "GradCAMCallback": "callbacks.cam",
    "InkEMA": "callbacks.ema",
    "InkEarlyStopping": "callbacks.early_stopping",
    "InkPredictionWriter": "callbacks.prediction_writer",
    "LatestCheckpoint": "callbacks.latest_checkpoint",
}

__all__ = sorted(_EXPORTS)
__getattr__ = lazy_getattr(__name__, _EXPORTS)
