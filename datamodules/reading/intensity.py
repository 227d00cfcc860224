"""Per-fragment intensity normalisation: robust percentiles of the papyrus, computed once and cached.

Scans differ in brightness and contrast between fragments, scrolls and beamline settings, so dividing by the
dtype's maximum leaves the model's input on a different scale for every fragment, and augmentation limits given
in those units (a brightness shift of 0.2, noise of 0.05) mean different things on each. Instead, each
fragment's voxels inside the mask and the model's slice window are mapped so that their ``low`` percentile goes
to 0 and their ``high`` percentile to 1.

The percentiles come from a strided sample of every slice in the window (about 256 k pixels a slice, never a
whole slice), so a 14830 × 9506 fragment costs a few hundred MB of reads once. The result is cached as a small
JSON file in the fragment's cache folder, keyed by the window, the percentiles and the slices' sizes and
modification times, so it is computed again whenever any of them changes.
"""

from __future__ import annotations

import hashlib
import json
import math
from typing import TYPE_CHECKING

import numpy as np

from utils.atomic import atomic_write_text

if TYPE_CHECKING:
    from datamodules.reading.fragment import Fragment

NORMALIZATIONS = ("fragment", "dtype")
_SAMPLES_PER_SLICE = 1 << 18


def check_normalization(normalization: str, low: float, high: float) -> None:
    """Rejects an unknown normalisation or percentiles outside ``0 <= low < high <= 100``."""
    if normalization not in NORMALIZATIONS:
        raise ValueError(f"normalization must be one of {list(NORMALIZATIONS)}, got {normalization!r}")
    if not (0.0 <= low < high <= 100.0):
        raise ValueError(f"intensity percentiles must satisfy 0 <= low < high <= 100, got low={low}, high={high}")


def intensity_range(fragment: Fragment, z0: int, z1: int, low: float = 0.5, high: float = 99.5) -> tuple[float, float]:
    """The ``low`` and ``high`` percentiles of the fragment's voxels inside the mask, slices ``[z0, z1)``.

    Cached in ``fragment.cache_dir``; computed from a strided sample of each slice.

    Args:
        fragment: the fragment.
        z0: first slice (depth order after ``reverse_depth``).
        z1: one past the last slice.
        low: lower percentile, mapped to 0.
        high: upper percentile, mapped to 1.

    Returns:
        ``(lo, hi)`` in the stored dtype's units, with ``hi > lo``.

    Raises:
        ValueError: the window's voxels are all equal (naming the fragment).
    """
    z0, z1 = max(0, z0), min(fragment.depth, z1)
    key = _cache_key(fragment, z0, z1, low, high)
    target = fragment.cache_dir / f"intensity.{key}.json"
    if target.is_file():
        try:
            stored = json.loads(target.read_text())
            return float(stored["lo"]), float(stored["hi"])
        except (ValueError, KeyError, TypeError):
            pass  # a damaged cache file is computed again
    lo, hi = _compute(fragment, z0, z1, low, high)
    target.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(target, json.dumps({"lo": lo, "hi": hi, "z0": z0, "z1": z1, "low": low, "high": high}))
    return lo, hi


def _cache_key(fragment: Fragment, z0: int, z1: int, low: float, high: float) -> str:
    digest = hashlib.sha1(f"{z0}:{z1}:{low}:{high}:{fragment.reverse_depth}".encode())
    digest.update(fragment.source_key(z0, z1).encode())  # slices' and mask's versions, TIFF or zarr
    return digest.hexdigest()[:16]


def _compute(fragment: Fragment, z0: int, z1: int, low: float, high: float) -> tuple[float, float]:
    step = max(1, int(math.sqrt(fragment.height * fragment.width / _SAMPLES_PER_SLICE)))
    inside = np.asarray(fragment.mask[::step, ::step], dtype=bool)
    if not inside.any():  # an empty (or very sparse) mask: the fragment gives no tile, any range will do
        inside = np.ones_like(inside)
    samples = [np.asarray(fragment.plane(z)[::step, ::step])[inside] for z in range(z0, z1)]
    values = np.concatenate(samples)
    lo, hi = (float(v) for v in np.percentile(values, [low, high]))
    if not hi > lo:
        raise ValueError(
            f"fragment '{fragment.id}': slices {z0}..{z1 - 1} are constant inside the mask ({lo}); "
            "nothing to normalise (use normalization='dtype' to keep raw values)"
        )
    return lo, hi
