"""Pseudo-labels for label rounds: hysteresis on a teacher's probabilities, and label sets beside the segments."""

from datamodules.pseudo.hysteresis import Hysteresis, hysteresis, hysteresis_bands
from datamodules.pseudo.label_set import (
    BACKGROUND_CEILING,
    LABEL_SET_MANIFEST,
    LABEL_SET_RECORD,
    PSEUDO_LABEL_RULES,
    PseudoLabelRule,
    SegmentCounts,
    label_set_manifest,
    write_label_set,
    write_segment_labels,
)

__all__ = [
    "BACKGROUND_CEILING",
    "LABEL_SET_MANIFEST",
    "LABEL_SET_RECORD",
    "PSEUDO_LABEL_RULES",
    "Hysteresis",
    "PseudoLabelRule",
    "SegmentCounts",
    "hysteresis",
    "hysteresis_bands",
    "label_set_manifest",
    "write_label_set",
    "write_segment_labels",
]
