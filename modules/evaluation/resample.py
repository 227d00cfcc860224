"""Upsampling of stitched probability maps to a fragment's full resolution, in row bands to bound memory.

`modules.evaluation.stitching.FragmentStitcher` may keep a fragment's maps at ``1/stitch_stride`` resolution (a pixel
covers an ``s × s`` block); whatever writes full-size outputs turns them back into full-resolution bands here.
Plain numpy, so the rule can be tested and reused without a Trainer.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np

# Full-resolution pixels produced per band; bounds the working memory (a few float32 bands).
BAND_PIXELS = 1 << 22


def _axis_scale(full: int, stored: int) -> float:
    """Full-resolution pixels per stored pixel: the integer stitch stride when it explains the sizes."""
    guess = math.ceil(full / stored)
    for s in (guess, guess - 1, guess + 1):
        if s >= 1 and math.ceil(full / s) == stored:
            return float(s)
    return full / stored


def _nearest_index(stored: int, scale: float, start: int, stop: int) -> np.ndarray:
    """Stored index of full-resolution pixels ``start..stop-1`` (the stored pixel whose block holds them)."""
    pos = (np.arange(start, stop, dtype=np.float64) + 0.5) / scale
    return np.minimum(pos.astype(np.int64), stored - 1)


def _linear_weights(stored: int, scale: float, start: int, stop: int) -> tuple[np.ndarray, ...]:
    """Bilinear taps (i0, i1, w1) along one axis; stored pixel i is centred on full coordinate (i + 0.5) * scale."""
    pos = (np.arange(start, stop, dtype=np.float64) + 0.5) / scale - 0.5
    pos = np.clip(pos, 0.0, stored - 1)
    i0 = np.floor(pos).astype(np.int64)
    i1 = np.minimum(i0 + 1, stored - 1)
    return i0, i1, (pos - i0).astype(np.float32)


def band_rows(full_shape: tuple[int, int], band_pixels: int = BAND_PIXELS) -> list[tuple[int, int]]:
    """Row ranges ``(r0, r1)`` of about `band_pixels` full-resolution pixels each, covering ``full_shape``."""
    height, width = full_shape
    rows = max(1, band_pixels // max(1, width))
    return [(r0, min(height, r0 + rows)) for r0 in range(0, height, rows)]


def _scales(stored: tuple[int, int], full_shape: tuple[int, int], stride: int | None) -> tuple[float, float]:
    if stride is not None:
        for axis in (0, 1):
            if -(-full_shape[axis] // stride) != stored[axis]:
                raise ValueError(f"a map of shape {stored} is not {full_shape} at 1/{stride} resolution")
        return float(stride), float(stride)
    return _axis_scale(full_shape[0], stored[0]), _axis_scale(full_shape[1], stored[1])


def prob_band(prob: np.ndarray, full_shape: tuple[int, int], r0: int, r1: int, stride: int | None = None) -> np.ndarray:
    """Rows ``r0..r1-1`` of ``prob`` bilinearly upsampled to ``full_shape`` (float32 ``[r1 - r0, W]``).

    Args:
        prob: float ``[h, w]`` map; stored pixel ``(i, j)`` covers the full-resolution block starting at
            ``(i * s, j * s)``.
        full_shape: ``(H, W)`` with ``H >= h`` and ``W >= w``.
        r0: First full-resolution row.
        r1: One past the last row.
        stride: The stitch stride ``s`` when known (exact); None: inferred from the shapes.

    Raises:
        ValueError: ``stride`` does not explain the shapes.
    """
    h, w = prob.shape
    if (h, w) == tuple(full_shape):
        return prob[r0:r1].astype(np.float32, copy=False)
    sy, sx = _scales((h, w), full_shape, stride)
    j0, j1, wx = _linear_weights(w, sx, 0, full_shape[1])
    i0, i1, wy = _linear_weights(h, sy, r0, r1)
    top = prob[i0].astype(np.float32, copy=False)
    mixed = top + (prob[i1].astype(np.float32, copy=False) - top) * wy[:, None]
    # In place, so a band costs two full-width float32 arrays.
    band = mixed[:, j1]
    left = mixed[:, j0]
    band -= left
    band *= wx[None, :]
    band += left
    return band


def full_resolution_bands(
    prob: np.ndarray,
    valid: np.ndarray,
    full_shape: tuple[int, int],
    band_pixels: int = BAND_PIXELS,
    stride: int | None = None,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yields ``(prob, valid)`` row bands of the maps upsampled to ``full_shape``, top to bottom.

    Probabilities are interpolated bilinearly (`prob_band`), ``valid`` by nearest neighbour. A stored pixel
    ``(i, j)`` of a map kept at ``1/s`` resolution covers the full-resolution block starting at ``(i * s, j * s)``
    (as `modules.evaluation.stitching.FragmentStitcher` stores them). Full-resolution maps are sliced, not copied.

    Args:
        prob: float ``[h, w]`` probabilities.
        valid: bool ``[h, w]``.
        full_shape: ``(H, W)`` with ``H >= h`` and ``W >= w``.
        band_pixels: Full-resolution pixels per band (bounds memory).
        stride: The stitch stride when known; None: inferred from the shapes.

    Yields:
        float32 ``[n, W]`` probabilities and bool ``[n, W]`` valid flags.
    """
    h, w = prob.shape
    same = (h, w) == tuple(full_shape)
    if not same:
        sy, sx = _scales((h, w), full_shape, stride)
        cols_nearest = _nearest_index(w, sx, 0, full_shape[1])
    for r0, r1 in band_rows(full_shape, band_pixels):
        band = prob_band(prob, full_shape, r0, r1, stride)
        valid_band = valid[r0:r1] if same else valid[np.ix_(_nearest_index(h, sy, r0, r1), cols_nearest)]
        yield band, valid_band
