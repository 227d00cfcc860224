"""Array layout changes between the model's ``[C, H, W]`` and albumentations' ``[H, W, C]``, one copy each.

One OpenCV transpose of the ``[C, H*W]`` (or ``[H*W, C]``) view is about 3x faster than numpy's strided copy.
"""

from __future__ import annotations

import cv2
import numpy as np

__all__ = ["to_channels_first", "to_channels_last"]


def to_channels_last(chw: np.ndarray) -> np.ndarray:
    """``[C, H, W]`` → C-contiguous ``[H, W, C]`` ."""
    channels, height, width = chw.shape
    flat = np.ascontiguousarray(chw).reshape(channels, height * width)
    return (cv2.transpose(flat) if channels > 1 else flat.T.copy()).reshape(height, width, channels)


def to_channels_first(hwc: np.ndarray) -> np.ndarray:
    """``[H, W, C]`` → C-contiguous ``[C, H, W]``."""
    height, width, channels = hwc.shape
    flat = np.ascontiguousarray(hwc).reshape(height * width, channels)
    return (cv2.transpose(flat) if channels > 1 else flat.T.copy()).reshape(channels, height, width)
