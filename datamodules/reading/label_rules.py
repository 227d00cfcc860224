"""How label maps are read: ink at or above a threshold, optional soft targets, an optional "unknown" value.

Published ink labels are hand-painted and anti-aliased: 8-bit grey in which every level occurs. A map's values
(`datamodules.reading.map_reader`) become *levels* 0..255 (0/1 maps: 1 is 255; 16-bit maps: value / 257), then:

- ink is ``level >= threshold * 255`` (default: at least half-way, 128 and up);
- with ``soft``, training targets are ``level / 255`` (the Grand Prize code's ``label / 255``); scores still use the
  thresholded map;
- ``unknown`` is a level that means "not known": such pixels are neither ink nor background and count in no loss
  and no score. It is off by default, since anti-aliasing produces every grey level; a separate ignore or
  supervision map is the better way to say where labels are not trusted.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class LabelConfig:
    """Label reading settings (``--data.labels.*``).

    Attributes:
        threshold: ink where the label's level is at least this fraction of full scale, in (0, 1].
        soft: train on the grey level (``level / 255``) as a soft target instead of the thresholded map.
        unknown: a level 0..255 meaning "unknown" (left out of loss and scores); None: no such level.
    """

    threshold: float = 0.5
    soft: bool = False
    unknown: int | None = None

    def __post_init__(self) -> None:
        if isinstance(self.threshold, bool) or not isinstance(self.threshold, (int, float)):
            raise ValueError(f"labels.threshold must be a number in (0, 1], got {self.threshold!r}")
        if not 0.0 < float(self.threshold) <= 1.0:
            raise ValueError(f"labels.threshold must be in (0, 1], got {self.threshold}")
        if not isinstance(self.soft, bool):
            raise ValueError(f"labels.soft must be true or false, got {self.soft!r}")
        if self.unknown is not None and (
            isinstance(self.unknown, bool) or not isinstance(self.unknown, int) or not 0 <= self.unknown <= 255
        ):
            raise ValueError(f"labels.unknown must be a level 0..255 or null, got {self.unknown!r}")

    @property
    def ink_level(self) -> int:
        """The lowest level read as ink."""
        return max(1, math.ceil(float(self.threshold) * 255 - 1e-9))

    @property
    def key(self) -> str:
        """A short name of the settings that change the binary map, for cache file names."""
        return f"t{self.ink_level}" + ("" if self.unknown is None else f"u{self.unknown}")


def is_binary(values: set[int], full: int) -> bool:
    """Values are off/on only: ``{0, full}`` or ``{0, 1}`` (some subset)."""
    return values <= {0, full} or values <= {0, 1}


def to_levels(values: np.ndarray, full: int, binary: bool) -> np.ndarray:
    """A map's values on its ``full`` scale as uint8 levels 0..255; ``binary``: a 0/1 or 0/full map."""
    if values.dtype == bool or binary:
        return (values > 0).astype(np.uint8) * np.uint8(255)
    if full == 255:
        return values.astype(np.uint8, copy=False)
    return ((values.astype(np.uint32) + 128) // 257).astype(np.uint8)
