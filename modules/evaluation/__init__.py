"""Whole-fragment evaluation: tile probabilities (with test-time augmentation) blended into fragment maps, reduced
across ranks and scored on the whole fragment at full resolution (`EvalConfig`, ``--model.eval.*``)."""

from modules.evaluation.metrics import InkScoreAccumulator, fbeta_at, fragment_scores, overall_scores
from modules.evaluation.steps import (
    EVAL_STAGES,
    EvalConfig,
    callback_maps,
    datamodule_tile_size,
    eval_probabilities,
    new_stitcher,
    score_stitched,
)
from modules.evaluation.stitching import FragmentStitcher
from modules.evaluation.tta import tta_predict
from modules.evaluation.windows import window_weights

__all__ = [
    "EVAL_STAGES",
    "EvalConfig",
    "FragmentStitcher",
    "InkScoreAccumulator",
    "callback_maps",
    "datamodule_tile_size",
    "eval_probabilities",
    "fbeta_at",
    "fragment_scores",
    "new_stitcher",
    "overall_scores",
    "score_stitched",
    "tta_predict",
    "window_weights",
]
