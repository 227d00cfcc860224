"""The trivial baseline's bound: the best F0.5 that one slice and one global threshold reach on a fragment.

The synthetic generator is meant to need learning (the ink follows a wobbling surface and is fainter than the
noise); this bound is how tests and the README show that it does. It reads fragments with the fragment
reader's own slice listing and PNG checks, so it sees a fragment exactly as training does, but it also
accepts float slices, which the training reader does not.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tifffile

from datamodules.reading.fragment import SLICE_DIRS, find_volume_dir, list_slices
from datamodules.reading.fragment_maps import read_binary_map

_HISTOGRAM_ROWS = 1024  # row band of the level histograms, to bound memory on large slices
_FLOAT_LEVELS = 4096


def best_single_slice_f05(fragment_dir: str | Path, z_range: tuple[int, int] | None = None) -> float:
    """Best F0.5 that one slice and one global threshold reach inside the mask: the trivial baseline's bound.

    Every slice in ``z_range`` (file indices ``[start, end)``; default all) is read on its own, and every
    threshold is tried in both polarities (ink brighter than it, or darker). Integer slices are swept exactly
    over all their values; float slices over 4096 levels.

    Args:
        fragment_dir: a fragment folder with ``surface_volume/`` or ``layers/``, ``inklabels.png`` and
            optionally ``mask.png``.
        z_range: ``(start, end)`` file indices of the slices to try.

    Returns:
        The best F0.5 (beta = 0.5), 0.0 when the mask holds no ink.

    Raises:
        FileNotFoundError: no slice folder, no numbered slices or no ``inklabels.png``.
        ValueError: an invalid ``z_range``, a gap in the slice numbering, images whose sizes disagree or
            mask/label PNGs that are not binary.
    """
    fragment_dir = Path(fragment_dir)
    volume_dir = find_volume_dir(fragment_dir)
    if volume_dir is None:
        raise FileNotFoundError(f"'{fragment_dir}' holds no {' or '.join(d + '/' for d in SLICE_DIRS)} folder")
    slices = list_slices(volume_dir)
    start, end = (0, len(slices)) if z_range is None else z_range
    if not 0 <= start < end <= len(slices):
        raise ValueError(
            f"z_range {z_range} is not a non-empty range inside the {len(slices)} slices of '{volume_dir}'"
        )
    labels_path = fragment_dir / "inklabels.png"
    if not labels_path.is_file():
        raise FileNotFoundError(f"'{labels_path}' not found: the bound needs ink labels")
    with tifffile.TiffFile(slices[start]) as tif:
        shape = tuple(int(s) for s in tif.series[0].shape)
    labels = read_binary_map(labels_path, shape, "ink labels")
    mask_path = fragment_dir / "mask.png"
    mask = read_binary_map(mask_path, shape, "mask") if mask_path.is_file() else np.ones_like(labels)
    positives = int(np.count_nonzero(labels & mask))
    if positives == 0:
        return 0.0
    best = 0.0
    for path in slices[start:end]:
        image = tifffile.imread(path)
        if image.shape != labels.shape:
            raise ValueError(f"slice '{path}' is {image.shape} but '{labels_path}' is {labels.shape}")
        pos, neg = _level_histograms(image, mask, labels)
        for ordered_pos, ordered_neg in ((pos[::-1], neg[::-1]), (pos, neg)):  # ink brighter, then darker
            tp = np.cumsum(ordered_pos)
            fp = np.cumsum(ordered_neg)
            # F_beta = (1 + b^2) TP / ((1 + b^2) TP + b^2 FN + FP), with b = 0.5
            f05 = 1.25 * tp / (1.25 * tp + 0.25 * (positives - tp) + fp)
            best = max(best, float(f05.max()))
    return best


def _level_histograms(image: np.ndarray, mask: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Histograms of ink and non-ink levels inside the mask, built in row bands to bound memory.

    uint8/uint16 images keep every value as a level (an exact threshold sweep); others get 4096 bins.
    """
    if image.dtype in (np.uint8, np.uint16):
        num_levels = 1 << (8 * image.dtype.itemsize)

        def to_levels(values: np.ndarray) -> np.ndarray:
            return values

    else:
        low = float(np.min(image, where=mask, initial=np.inf))
        high = float(np.max(image, where=mask, initial=-np.inf))
        span = high - low if high > low else 1.0
        num_levels = _FLOAT_LEVELS

        def to_levels(values: np.ndarray) -> np.ndarray:
            return np.clip((values.astype(np.float64) - low) / span * num_levels, 0, num_levels - 1).astype(np.intp)

    pos = np.zeros(num_levels, dtype=np.int64)
    neg = np.zeros(num_levels, dtype=np.int64)
    for y0 in range(0, image.shape[0], _HISTOGRAM_ROWS):
        inside = mask[y0 : y0 + _HISTOGRAM_ROWS]
        levels = to_levels(image[y0 : y0 + _HISTOGRAM_ROWS][inside])
        truth = labels[y0 : y0 + _HISTOGRAM_ROWS][inside]
        pos += np.bincount(levels[truth], minlength=num_levels)
        neg += np.bincount(levels[~truth], minlength=num_levels)
    return pos, neg
