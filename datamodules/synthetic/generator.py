"""The synthetic generator: a papyrus sheet, its ink and its noise, rendered slice by slice without file I/O.

A fragment is a papyrus sheet lying in the volume at a surface depth ``z_s(y, x)`` that wobbles smoothly
across the fragment. The sheet has fibre texture (horizontal and vertical streaks); letter-like ink strokes
lie on its surface and change the intensity only faintly, and only in the 2-3 slices at ``z_s``. Because the
surface wobbles and the ink is weaker than the per-pixel noise, no single slice thresholded globally finds
the ink (see `datamodules.synthetic.single_slice.best_single_slice_f05`), while a model that follows the surface over
depth and pools over space can.

Generation never holds the volume: the 2-D fields (surface depth, sheet brightness, ink, mask) are built
once, in row bands from small random grids, and every slice is computed from them on its own. Writing the
slices to disk is `datamodules.synthetic`'s job.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from datamodules.synthetic.fields import REFERENCE_DEPTH, SmoothField, bands
from datamodules.synthetic.strokes import render_ink
from utils.checks import check_int, check_range

# Intensities in units of the dtype's full range (1.0 = 65535 for uint16, 255 for uint8).
_BACKGROUND = 0.14  # air around the sheet
_SHEET_CONTRAST = 0.40  # sheet interior minus air
_FIBRE_AMPLITUDE = 0.10  # relative brightness modulation of the sheet by fibres
INK_CONTRAST = 0.022  # default ink contrast: 5.5 % of the sheet contrast, equal to the per-pixel noise
_NOISE_SIGMA = 0.022

# Depths in slices, for the default 65-slice volume (REFERENCE_DEPTH); other depths scale them.
_SHEET_THICKNESS = 6.0
_EDGE_SOFTNESS = 0.8  # width of the sheet's faces, in slices
_INK_OFFSET = 0.5  # the ink peaks half a slice under the surface
_INK_SPREAD = 0.7  # Gaussian sigma of the ink over depth: 2-3 slices carry it

_LUT_STEPS = 32  # depth profile lookup table resolution, per slice
DTYPES = ("uint8", "uint16")

# Separate random streams per component, so that e.g. the mask does not change when the ink does.
_STREAM_SURFACE, _STREAM_FIBRES, _STREAM_MASK, _STREAM_INK, _STREAM_NOISE, _STREAM_REALISM = range(1, 7)


@dataclass(frozen=True)
class Realism:
    """What makes real ink hard, each off by default (the clean demo) and each a knob.

    Attributes:
        ink_presence: fraction of each labelled stroke's pixels that carry ink, in (0, 1]; the rest of the
            stroke is bare papyrus in blobs a few stroke widths long (real ink is patchy).
        label_dilation: labels are the strokes grown by this many pixels (real labels are drawn loosely).
        thickness_variation: the sheet's thickness varies by up to this fraction around its mean, in [0, 0.9].
        ink_displacement: ink lifts the papyrus surface by this many slices (ink has a thickness of its own).
    """

    ink_presence: float = 1.0
    label_dilation: int = 0
    thickness_variation: float = 0.0
    ink_displacement: float = 0.0

    def __post_init__(self) -> None:
        check_range("Realism.ink_presence", self.ink_presence, 0.0, 1.0, low_open=True)
        check_int("Realism.label_dilation", self.label_dilation, minimum=0)
        check_range("Realism.thickness_variation", self.thickness_variation, 0.0, 0.9)
        check_range("Realism.ink_displacement (slices)", self.ink_displacement, 0.0, 3.0)


# The regime real fragments are in: ink at 0.7x the per-voxel noise, present in three quarters of each stroke,
# labels a pixel wider than the ink, a sheet whose thickness varies by 40 %, ink lifting the surface half a slice.
FAINT_INK_CONTRAST = 0.7 * _NOISE_SIGMA
FAINT_REALISM = Realism(ink_presence=0.75, label_dilation=1, thickness_variation=0.4, ink_displacement=0.5)


def check_volume_args(
    height: int, width: int, depth: int, seed: int, dtype: str, surface_z: float | None, ink_contrast: float
) -> None:
    """Checks the generator's arguments (see `SyntheticVolume`).

    Raises:
        ValueError: a size, the seed, the dtype, the surface depth or the ink contrast is invalid.
    """
    for name, value, minimum in (("height", height, 8), ("width", width, 8), ("depth", depth, 1)):
        check_int(name, value, minimum=minimum, allow_numpy=True)
    check_int("seed", seed, minimum=0, allow_numpy=True)
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
    if surface_z is not None and not (
        isinstance(surface_z, int | float) and math.isfinite(surface_z) and 0 <= surface_z <= depth - 1
    ):
        raise ValueError(f"surface_z must lie in [0, depth - 1] = [0, {depth - 1}], got {surface_z!r}")
    check_range("ink_contrast", ink_contrast, 0.0, 0.5)


class SyntheticVolume:
    """One synthetic fragment: its 2-D fields, built once, and its slices rendered from them on demand.

    The same arguments always give the same pixels; every slice band has its own noise stream, so slices can be
    rendered in any order.

    Args:
        height: image height in pixels.
        width: image width in pixels.
        depth: number of slices.
        seed: random seed.
        dtype: ``"uint16"`` or ``"uint8"``.
        surface_z: mean surface depth in slices; default 30 for 65 slices, scaled with ``depth``.
        with_mask: give the papyrus irregular margins; without it the sheet covers the whole frame.
        ink_contrast: ink's brightness at its peak, as a fraction of the dtype's range.
        realism: patchy ink, loose labels, varying sheet thickness, ink that displaces the surface (see
            `Realism`); None: none of these.

    Attributes:
        mask: bool ``[H, W]``, where the papyrus is.
        labels: bool ``[H, W]``, the ink labels (inside the mask).

    Raises:
        ValueError: an invalid argument (see `check_volume_args`).
    """

    def __init__(
        self,
        height: int,
        width: int,
        *,
        depth: int = 65,
        seed: int = 0,
        dtype: str = "uint16",
        surface_z: float | None = None,
        with_mask: bool = True,
        ink_contrast: float = INK_CONTRAST,
        realism: Realism | None = None,
    ) -> None:
        check_volume_args(height, width, depth, seed, dtype, surface_z, ink_contrast)
        self.height, self.width, self.depth, self.seed = height, width, depth, seed
        self.dtype = np.dtype(dtype)
        self._zs, self._amplitude, strokes, self.mask = _build_fields(height, width, depth, seed, surface_z, with_mask)
        self._ink, self.labels, self._thickness = _apply_realism(
            realism or Realism(), strokes, self.mask, self._zs, depth, seed
        )
        self._scale = float(np.iinfo(self.dtype).max)
        self._profile = _DepthProfiles(depth, self._scale, ink_contrast)

    def render_slice(self, z: int, out: np.ndarray | None = None) -> np.ndarray:
        """Slice ``z`` (depth order) in the volume's dtype, written into ``out`` when given.

        Args:
            z: the slice's depth, ``0 .. depth - 1``.
            out: a ``[H, W]`` array of the volume's dtype to fill (saves an allocation per slice).

        Returns:
            The slice, ``out`` when given.
        """
        if out is None:
            out = np.empty((self.height, self.width), dtype=self.dtype)
        for band, (y0, y1) in enumerate(bands(self.height)):
            noise = np.random.default_rng([self.seed, _STREAM_NOISE, z, band]).standard_normal(
                (y1 - y0, self.width), dtype=np.float32
            )
            thickness = None if self._thickness is None else self._thickness[y0:y1]
            values = self._profile.slice_band(
                z, self._zs[y0:y1], self._amplitude[y0:y1], self._ink[y0:y1], noise, thickness
            )
            out[y0:y1] = np.clip(values, 0.0, self._scale, out=values)
        return out

    def infrared(self) -> np.ndarray:
        """A grey infrared-like photo, uint8: papyrus tone from the sheet texture, ink darker, background black."""
        ir = np.empty(self.mask.shape, dtype=np.uint8)
        for y0, y1 in bands(self.height):
            tone = self._amplitude[y0:y1].astype(np.float32) / _SHEET_CONTRAST * 150 - 40 * self._ink[y0:y1]
            ir[y0:y1] = np.clip(tone, 0, 255) * self.mask[y0:y1]
        return ir


def surface_depth(
    height: int, width: int, *, depth: int = 65, seed: int = 0, surface_z: float | None = None
) -> np.ndarray:
    """The sheet's surface depth ``z_s(y, x)`` (float32 slices) that `SyntheticVolume` uses for these arguments.

    Lets tests build an oracle that knows where the surface is. With ``reverse_depth=True`` the file index of
    depth ``z`` is ``depth - 1 - z``.

    Raises:
        ValueError: an invalid size, seed or surface depth.
    """
    check_volume_args(height, width, depth, seed, "uint16", surface_z, INK_CONTRAST)
    return _surface(height, width, depth, seed, surface_z).full(height)


def _surface(height: int, width: int, depth: int, seed: int, surface_z: float | None) -> SmoothField:
    return SmoothField.surface(np.random.default_rng([seed, _STREAM_SURFACE]), height, width, depth, surface_z)


def _build_fields(
    height: int, width: int, depth: int, seed: int, surface_z: float | None, with_mask: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Full-size 2-D fields: surface depth (float32), sheet contrast (float16), ink (bool), mask (bool).

    About 8 bytes a pixel (512 MB for 8192 x 8192); band temporaries add a few tens of MB.
    """
    surface = _surface(height, width, depth, seed, surface_z)
    rng = np.random.default_rng([seed, _STREAM_FIBRES])
    fibre = max(1.5, min(height, width) / 256)  # fibre width grows a little with the fragment
    horizontal = SmoothField.random(rng, height, width, fibre, 16 * fibre)
    vertical = SmoothField.random(rng, height, width, 16 * fibre, fibre)
    patches = SmoothField.random(rng, height, width, max(16.0, height / 6), max(16.0, width / 6))
    rng = np.random.default_rng([seed, _STREAM_MASK])
    outline = SmoothField.random(rng, height, width, max(16.0, height / 5), max(16.0, width / 5))
    cx, cy = (width - 1) / 2, (height - 1) / 2
    xx = ((np.arange(width, dtype=np.float32) - cx) / (0.47 * width)) ** 2

    zs = np.empty((height, width), dtype=np.float32)
    amplitude = np.empty((height, width), dtype=np.float16)
    mask = np.empty((height, width), dtype=bool)
    for y0, y1 in bands(height):
        zs[y0:y1] = surface.band(y0, y1)
        texture = 1 + _FIBRE_AMPLITUDE * (
            0.7 * horizontal.band(y0, y1) + 0.7 * vertical.band(y0, y1) + 0.4 * patches.band(y0, y1)
        )
        np.clip(texture, 0.5, 1.5, out=texture)
        if with_mask:
            yy = ((np.arange(y0, y1, dtype=np.float32) - cy) / (0.47 * height))[:, None] ** 2
            mask[y0:y1] = yy + xx + 0.15 * outline.band(y0, y1) < 1
        else:
            mask[y0:y1] = True
        amplitude[y0:y1] = _SHEET_CONTRAST * texture * mask[y0:y1]
    ink = render_ink(height, width, np.random.default_rng([seed, _STREAM_INK]))
    ink &= mask
    return zs, amplitude, ink, mask


def _apply_realism(
    realism: Realism, strokes: np.ndarray, mask: np.ndarray, zs: np.ndarray, depth: int, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Ink that is actually there, the labels (inside the mask), and the sheet thickness map (None: constant).

    Lifts the surface ``zs`` (in place) under the ink by ``ink_displacement`` slices.
    """
    rng = np.random.default_rng([seed, _STREAM_REALISM])
    height, width = strokes.shape
    ink = strokes & mask
    if realism.ink_presence < 1.0 and ink.any():
        step = 12.0  # patches of a few stroke widths
        # One fresh field per row band, as the generator has always drawn it: fragments' bytes depend on it.
        patches = np.concatenate(
            [SmoothField.random(rng, height, width, step, step).band(y0, y1) for y0, y1 in bands(height)]
        )
        cut = np.quantile(patches[ink], realism.ink_presence)
        ink &= patches <= cut
    labels = strokes & mask
    if realism.label_dilation > 0:
        size = 2 * realism.label_dilation + 1
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (size, size))
        labels = cv2.dilate(labels.astype(np.uint8), kernel).astype(bool) & mask
    if realism.ink_displacement > 0:
        zs -= np.float32(realism.ink_displacement) * ink
    thickness = None
    if realism.thickness_variation > 0:
        mean = max(2.0, _SHEET_THICKNESS * depth / REFERENCE_DEPTH)
        field = SmoothField.random(rng, height, width, max(16.0, height / 4), max(16.0, width / 4))
        grid = field.grid / np.abs(field.grid).max()
        field.grid = (mean * (1 + realism.thickness_variation * grid)).astype(np.float32)
        thickness = field.full(height)
    return ink, labels, thickness


class _DepthProfiles:
    """Sheet and ink profiles over depth offset ``z - z_s``, tabulated so a slice costs a lookup.

    Values come out in dtype units (``scale`` = the dtype's maximum), offset by 0.5 so truncation rounds.
    """

    def __init__(self, depth: int, scale: float, ink_contrast: float = INK_CONTRAST) -> None:
        self._scale = scale
        thickness = max(2.0, _SHEET_THICKNESS * depth / REFERENCE_DEPTH)
        self._low = -float(depth) - 2
        offsets = np.arange(self._low, depth + 2, 1 / _LUT_STEPS, dtype=np.float64)
        sigmoid = lambda t: 1 / (1 + np.exp(-t))  # noqa: E731
        front = sigmoid(offsets / _EDGE_SOFTNESS)
        sheet = front * sigmoid((thickness - offsets) / _EDGE_SOFTNESS)
        self.sheet = (scale * sheet).astype(np.float32)  # times the sheet contrast map (in intensity units)
        self.face = front.astype(np.float32)  # one face of the sheet, for a thickness that varies per pixel
        ink = ink_contrast * np.exp(-0.5 * ((offsets - _INK_OFFSET) / _INK_SPREAD) ** 2)
        self.ink = (scale * ink).astype(np.float32)

    def slice_band(
        self,
        z: int,
        zs: np.ndarray,
        amplitude: np.ndarray,
        ink: np.ndarray,
        noise: np.ndarray,
        thickness: np.ndarray | None = None,
    ) -> np.ndarray:
        index = ((z - zs - self._low) * _LUT_STEPS + 0.5).astype(np.int32)
        if thickness is None:
            values = self.sheet[index] * amplitude
        else:  # front face times back face: sigmoid(o / e) * sigmoid((t - o) / e)
            back = ((thickness - (z - zs) - self._low) * _LUT_STEPS + 0.5).astype(np.int32)
            np.clip(back, 0, len(self.face) - 1, out=back)
            values = self.face[index] * self.face[back] * (self._scale * amplitude.astype(np.float32))
        values += self.ink[index] * ink
        noise *= _NOISE_SIGMA * self._scale
        values += noise
        values += _BACKGROUND * self._scale + 0.5
        return values
