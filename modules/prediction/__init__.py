"""Whole-segment prediction in bounded memory: row bands, the tiles overlapping them, each rank's share, and the
stitcher that hands each band over once its last tile has arrived (the writer is `callbacks.prediction_writer`)."""

from modules.prediction.band_plan import PredictionLayout, RankPlan, SegmentBands, plan_rank
from modules.prediction.band_stitching import BandStitcher

__all__ = [
    "BandStitcher",
    "PredictionLayout",
    "RankPlan",
    "SegmentBands",
    "plan_rank",
]
