"""Smooth random 2-D fields for the synthetic generator: value noise and the sheet's surface depth, by row band.

The generator never holds the volume, and an 8192 x 8192 fragment's fields are built from small random grids
upsampled one row band at a time; this file is that machinery, shared by the surface, the fibres, the mask
outline and the realism knobs. The band height keys the noise too, so changing it changes every fragment.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

BAND_ROWS = 256  # row band for fields and slices; also keys the noise, so changing it changes the output

# Depths in slices, for the default 65-slice volume; other depths scale them.
REFERENCE_DEPTH = 65
_SURFACE_CENTRE = 30.0  # keeps the ink inside the usual slice range 15..44
_SURFACE_WOBBLE = 6.0  # largest departure of z_s from its centre


def bands(height: int) -> Iterator[tuple[int, int]]:
    """Row bands ``(y0, y1)`` of ``BAND_ROWS`` rows covering ``0 .. height`` (the last may be shorter)."""
    for y0 in range(0, height, BAND_ROWS):
        yield y0, min(y0 + BAND_ROWS, height)


class SmoothField:
    """Value noise: a small random grid, upsampled band by band with smoothstep interpolation.

    Args:
        grid: the random grid's node values.
        step_y: grid spacing in pixels along y.
        step_x: grid spacing in pixels along x; unequal spacings give streaks (fibres).
        width: width of the field in pixels.
    """

    def __init__(self, grid: np.ndarray, step_y: float, step_x: float, width: int) -> None:
        self.grid = grid.astype(np.float32)
        self.step_y = step_y
        self.step_x = step_x
        xs = np.arange(width, dtype=np.float64) / step_x
        self._x0 = np.floor(xs).astype(np.int64)
        self._fx = _smoothstep(xs - self._x0).astype(np.float32)

    @classmethod
    def random(cls, rng: np.random.Generator, height: int, width: int, step_y: float, step_x: float) -> SmoothField:
        """A field from a standard-normal grid covering ``height x width`` at the given spacings."""
        shape = (int((height - 1) / step_y) + 2, int((width - 1) / step_x) + 2)
        return cls(rng.standard_normal(shape), step_y, step_x, width)

    @classmethod
    def surface(
        cls, rng: np.random.Generator, height: int, width: int, depth: int, surface_z: float | None
    ) -> SmoothField:
        """z_s: a centre depth plus two octaves of value noise, bounded by the wobble amplitude.

        Args:
            rng: the surface's own random stream.
            height: image height in pixels.
            width: image width in pixels.
            depth: number of slices; the default centre and the wobble scale with it.
            surface_z: mean surface depth in slices; None: 30 for 65 slices, scaled with ``depth``.
        """
        scale = depth / REFERENCE_DEPTH
        centre = _SURFACE_CENTRE * scale if surface_z is None else surface_z
        wobble = _SURFACE_WOBBLE * scale
        step = max(12.0, max(height, width) / 8)  # grid of the fine octave; the coarse one is twice as wide
        fine = cls.random(rng, height, width, step, step).grid
        coarse = rng.standard_normal(((fine.shape[0] + 1) // 2 + 1, (fine.shape[1] + 1) // 2 + 1))
        # The coarse octave, linearly interpolated onto the fine grid's nodes.
        coarse = np.repeat(np.repeat(coarse, 2, 0), 2, 1)[: fine.shape[0] + 1, : fine.shape[1] + 1]
        coarse = (coarse[:-1, :-1] + coarse[1:, :-1] + coarse[:-1, 1:] + coarse[1:, 1:]) / 4
        grid = coarse / np.abs(coarse).max() + 0.5 * fine / np.abs(fine).max()
        # Interpolation never leaves the grid's range, so max-abs normalisation bounds the wobble exactly.
        grid = centre + wobble * grid / np.abs(grid).max()
        return cls(grid, step, step, width)

    def band(self, y0: int, y1: int) -> np.ndarray:
        """The field's rows ``y0 .. y1 - 1``, float32 ``[y1 - y0, width]``."""
        ys = np.arange(y0, y1, dtype=np.float64) / self.step_y
        iy = np.floor(ys).astype(np.int64)
        fy = _smoothstep(ys - iy).astype(np.float32)[:, None]
        rows = self.grid[iy] * (1 - fy) + self.grid[iy + 1] * fy
        return rows[:, self._x0] * (1 - self._fx) + rows[:, self._x0 + 1] * self._fx

    def full(self, height: int) -> np.ndarray:
        """The whole field, ``height`` rows, assembled band by band."""
        return np.concatenate([self.band(y0, y1) for y0, y1 in bands(height)])


def _smoothstep(t: np.ndarray) -> np.ndarray:
    return t * t * (3 - 2 * t)
