"""Where the papyrus surface lies in depth: a fragment's depth intensity profile, its surface and a layer window.

Scroll segments come with 21, 65 or 109 layers and some are stored with the depth order reversed, so a fixed
slice window (``z_start=15, z_end=45``) can miss the surface. The *depth profile* (the mean intensity of each
layer inside the papyrus mask) shows where the bright papyrus lies; this file finds the surface on it and
suggests a window of the model's input depth centred there.

Orientation convention: the project's synthetic fragments (`datamodules.synthetic.generator`) are the NORMAL
orientation. Going up in layer index you pass from the air in front of the written face into the sheet: the
surface is the air → papyrus (rising) edge and the papyrus lies at higher indices than the surface, with the ink
just behind the surface. A volume stored *reversed* shows the mirror image: papyrus at low indices, the surface
the papyrus → air (falling) edge. Positions and windows are given in the STORED order (file order) unless a
name says otherwise; `SurfaceEstimate.window_in_order` gives them in the order after ``reverse_depth``.

Detection rules (`detect_surface`):

1. The profile is smoothed with a Gaussian of ``max(0.5, layers / 65)`` layers (the generator's sheet and the
   real layer spacing scale with the layer count), so that one odd layer cannot move an edge.
2. The papyrus region is the run of layers at or above half maximum, ``min + (max - min) / 2`` of the smoothed
   profile, that holds the maximum. Its edges are located to sub-layer precision by linear interpolation.
3. The surface is an edge of that region lying inside the volume (a sheet running into an end of the volume has
   only one inner edge). When both edges are inside, it is the one closer to the volume's centre: segments are
   sampled around the segmented surface, so the back face of the sheet lies further out. A rising edge means
   normal order, a falling edge reversed.

The rules are mirror-equivariant: a fragment and its depth-reversed copy give opposite ``reversed`` flags,
surfaces ``s`` and ``layers - 1 - s`` and windows ``[a, b)`` and ``[layers - b, layers - a)``. The computation
keeps this exact (a symmetric smoothing sum, edges taken in the normal order's integer grid); only a profile
that is its own mirror image breaks the tie, and that is flagged. A profile without contrast (every layer the
same) raises `ValueError`; a doubtful one (weak contrast, both edges equally close to the centre) is returned
with ``confident=False`` and a ``note`` saying why.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from datamodules.reading.fragment import Fragment

# About 16 k pixels a layer: the mean then has a relative error well under 1 %, and a 14830 x 9506 segment costs a
# few hundred strided rows per layer to read.
SAMPLES_PER_LAYER = 1 << 14
REFERENCE_LAYERS = 65  # the smoothing width is one layer at 65 layers and scales with the count
MIN_LAYERS = 3
# Below this papyrus-air contrast (a fraction of the dtype's range) the profile may be noise: flagged, not refused.
WEAK_CONTRAST = 0.02
# Both edges inside and their distances to the centre closer than this (layers): the orientation is a guess.
AMBIGUOUS_DISTANCE = 1.0
_GRID = 1 << 16  # sub-layer positions are multiples of 1 / _GRID


@dataclass(frozen=True)
class DepthProfile:
    """Mean intensity of each layer inside the papyrus mask, in stored order.

    Attributes:
        fragment_id: the fragment's name.
        values: float64 ``[layers]``, mean raw intensity (the dtype's units) of each stored layer.
        dtype: the slices' dtype name (``uint8`` / ``uint16``), which sets the full range of ``values``.
        step: the sampling grid's stride in pixels (rows and columns).
        samples: pixels averaged per layer.
    """

    fragment_id: str
    values: np.ndarray
    dtype: str
    step: int
    samples: int

    @property
    def layers(self) -> int:
        """Number of layers."""
        return len(self.values)

    @property
    def full_range(self) -> float:
        """The dtype's maximum (65535 or 255)."""
        return float(np.iinfo(np.dtype(self.dtype)).max)


def depth_profile(fragment: Fragment, samples_per_layer: int = SAMPLES_PER_LAYER) -> DepthProfile:
    """The fragment's depth profile in stored order, from a strided grid of about ``samples_per_layer`` pixels.

    The grid keeps the pixels inside the mask (all pixels when none of the grid's falls inside), the same in every
    layer. Whatever ``fragment.reverse_depth`` says, the profile is in the order of the files.

    Raises:
        ValueError: ``samples_per_layer`` < 1.
    """
    if samples_per_layer < 1:
        raise ValueError(f"samples_per_layer must be >= 1, got {samples_per_layer}")
    step = max(1, int(math.sqrt(fragment.height * fragment.width / samples_per_layer)))
    inside = np.asarray(fragment.mask[::step, ::step], dtype=bool)
    if not inside.any():
        inside = np.ones_like(inside)
    layers = fragment.depth
    values = np.empty(layers, dtype=np.float64)
    for stored in range(layers):
        z = layers - 1 - stored if fragment.reverse_depth else stored
        values[stored] = np.asarray(fragment.plane(z)[::step, ::step])[inside].mean(dtype=np.float64)
    return DepthProfile(fragment.id, values, np.dtype(fragment.dtype).name, step, int(inside.sum()))


def smooth(values: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian smoothing with edge padding, summed symmetrically so a reversed input gives the reversed output
    bit for bit (``a + b == b + a`` in floating point; ``np.convolve`` sums in a different order)."""
    values = np.asarray(values, dtype=np.float64)
    radius = int(math.ceil(3 * sigma))
    if radius == 0:
        return values.copy()
    weights = np.exp(-0.5 * (np.arange(radius + 1) / sigma) ** 2)
    weights /= weights[0] + 2 * weights[1:].sum()
    padded = np.pad(values, radius, mode="edge")
    n = len(values)
    out = weights[0] * padded[radius : radius + n]
    for k in range(1, radius + 1):
        out = out + weights[k] * (padded[radius - k : radius - k + n] + padded[radius + k : radius + k + n])
    return out


def smoothing_sigma(layers: int) -> float:
    """The smoothing width for a volume of ``layers`` layers: ``max(0.5, layers / 65)``."""
    return max(0.5, layers / REFERENCE_LAYERS)


@dataclass(frozen=True)
class SurfaceEstimate:
    """The papyrus surface found on a depth profile (see the module docstring for the rules).

    Attributes:
        fragment_id: the fragment's name.
        layers: number of layers.
        surface: the surface's position in stored order, in layers (sub-layer precision).
        reversed: the volume is stored with the papyrus at low indices (a falling surface edge).
        normal_surface: the surface's position in normal order (after reversing a reversed volume).
        rising: the papyrus region's rising (air → papyrus) edge in stored order, None if it runs into layer 0.
        falling: its falling edge in stored order, None if it runs into the last layer.
        level: the half-maximum level of the smoothed profile (the dtype's units).
        contrast: ``max - min`` of the smoothed profile as a fraction of the dtype's range.
        confident: False when the result is a guess; ``note`` says why.
        note: the reasons for doubt, empty when confident.
    """

    fragment_id: str
    layers: int
    surface: float
    reversed: bool
    normal_surface: float
    rising: float | None
    falling: float | None
    level: float
    contrast: float
    confident: bool
    note: str

    def normal_window(self, depth: int) -> tuple[int, int]:
        """``[z_start, z_end)`` of ``depth`` layers in normal order, centred on the surface, clipped into the volume.

        ``depth // 2`` layers in front of the surface (air side) and the rest from the first layer at or behind it:
        ``z_start = ceil(normal_surface) - depth // 2``. On the default synthetic fragment (surface near 30 of 65
        layers) 30 layers give ``[15, 45)``, the project's default window.

        Raises:
            ValueError: ``depth`` < 1 or larger than the volume, naming the fragment and both numbers.
        """
        if depth < 1:
            raise ValueError(f"window depth must be >= 1, got {depth}")
        if depth > self.layers:
            raise ValueError(
                f"fragment '{self.fragment_id}' has {self.layers} layers, fewer than the model's input depth {depth}: "
                "use a smaller z_end - z_start"
            )
        start = math.ceil(self.normal_surface) - depth // 2
        start = min(max(start, 0), self.layers - depth)
        return start, start + depth

    def window(self, depth: int) -> tuple[int, int]:
        """The suggested ``[z_start, z_end)`` in STORED order (see `normal_window`)."""
        return self.window_in_order(depth, reverse_depth=False)

    def window_in_order(self, depth: int, reverse_depth: bool) -> tuple[int, int]:
        """The window in the depth order a `Fragment` opened with ``reverse_depth`` uses.

        ``reverse_depth == reversed`` gives the normal-order window; otherwise its mirror ``[L - b, L - a)``.
        """
        start, end = self.normal_window(depth)
        if reverse_depth == self.reversed:
            return start, end
        return self.layers - end, self.layers - start


def detect_surface(
    profile: DepthProfile | np.ndarray, *, fragment_id: str = "", dtype: str = "uint16"
) -> SurfaceEstimate:
    """Finds the papyrus surface and the depth order on a profile (rules in the module docstring).

    Args:
        profile: a `DepthProfile`, or raw per-layer values in stored order.
        fragment_id: the name errors give (a `DepthProfile` carries its own).
        dtype: the values' dtype, for the contrast (a `DepthProfile` carries its own).

    Raises:
        ValueError: fewer than 3 layers, non-finite values, or a flat profile, naming the fragment.
    """
    if isinstance(profile, DepthProfile):
        values, fragment_id, full = profile.values, profile.fragment_id, profile.full_range
    else:
        values, full = np.asarray(profile, dtype=np.float64), float(np.iinfo(np.dtype(dtype)).max)
    name = f"fragment '{fragment_id}'" if fragment_id else "depth profile"
    layers = len(values)
    if values.ndim != 1 or layers < MIN_LAYERS:
        raise ValueError(f"{name}: need a 1-D depth profile of at least {MIN_LAYERS} layers, got shape {values.shape}")
    if not np.isfinite(values).all():
        raise ValueError(f"{name}: the depth profile holds non-finite values")
    smoothed = smooth(values, smoothing_sigma(layers))
    lo, hi = float(smoothed.min()), float(smoothed.max())
    if not hi > lo:
        raise ValueError(
            f"{name}: flat depth profile (every layer has mean intensity {lo:.1f} inside the mask): no papyrus "
            "surface to find; set the slice window by hand (z_window fixed)"
        )
    level = lo + 0.5 * (hi - lo)
    notes = []
    contrast = (hi - lo) / full
    if contrast < WEAK_CONTRAST:
        notes.append(f"weak contrast ({contrast:.1%} of the range)")
    first, last, tied = _brightest_run(smoothed >= level, smoothed == hi, layers)
    if tied:
        notes.append("two equally bright regions")
    # Edge i - t (rising, stored order) and j + t (falling); t in [0, 1) from the same differences in a mirror.
    rise_t = _fraction(smoothed[first], smoothed[first - 1], level) if first > 0 else None
    fall_t = _fraction(smoothed[last], smoothed[last + 1], level) if last < layers - 1 else None
    if rise_t is not None and fall_t is not None:
        # Twice the distance to the centre (layers - 1) / 2: integer parts exact, so a mirror compares the same.
        rise_d = abs((2 * first - (layers - 1)) - 2 * rise_t)
        fall_d = abs((2 * last - (layers - 1)) + 2 * fall_t)
        reversed_ = fall_d < rise_d
        if abs(rise_d - fall_d) < 2 * AMBIGUOUS_DISTANCE:
            notes.append("both edges about equally close to the centre")
    else:
        reversed_ = rise_t is None
    # The surface in normal order: an integer layer index minus a fraction, the same arithmetic for a mirror.
    normal = float((layers - 1 - last) - fall_t) if reversed_ else float(first - rise_t)
    return SurfaceEstimate(
        fragment_id=fragment_id,
        layers=layers,
        surface=(layers - 1) - normal if reversed_ else normal,
        reversed=bool(reversed_),
        normal_surface=normal,
        rising=None if rise_t is None else first - rise_t,
        falling=None if fall_t is None else last + fall_t,
        level=level,
        contrast=contrast,
        confident=not notes,
        note="; ".join(notes),
    )


def _fraction(inside: float, outside: float, level: float) -> float:
    """Where ``level`` lies between an inner layer (>= level) and its outer neighbour, from the inner one, in [0, 1].

    Rounded to a multiple of 2^-16 layers, so that every position built from it (``i - t``, ``L - 1 - s``) is exact
    in floating point and a mirrored volume's positions are the mirror images bit for bit.
    """
    return round((inside - level) / (inside - outside) * _GRID) / _GRID


def _brightest_run(above: np.ndarray, peak: np.ndarray, layers: int) -> tuple[int, int, bool]:
    """``(first, last, tied)``: the run of ``above`` layers holding the maximum, inclusive.

    Several runs holding it: the one whose middle is closer to the centre, ``tied`` when two are equally close.
    """
    edges = np.flatnonzero(np.diff(np.concatenate(([0], above.astype(np.int8), [0]))))
    runs = [(int(a), int(b) - 1) for a, b in zip(edges[::2], edges[1::2]) if peak[a:b].any()]
    distance = [abs(a + b - (layers - 1)) for a, b in runs]
    best = min(distance)
    chosen = [run for run, d in zip(runs, distance) if d == best]
    return chosen[0][0], chosen[0][1], len(chosen) > 1
