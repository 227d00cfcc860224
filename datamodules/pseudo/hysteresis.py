"""Hysteresis thresholding of an ink-probability map, whole or in bands of rows with bounded memory.

Ink is every 8-connected component (diagonal neighbours join) of ``prob >= low`` that holds at least one seed
pixel ``prob >= high`` and has at least ``min_area`` pixels. A scroll's map (e.g. 30,000 x 11,000 px) does not fit
in memory whole, so `hysteresis_bands` reads it twice, a band of rows at a time: pass 1 labels each band and joins
labels across the seams between bands with a union-find, keeping only per-label counts; pass 2 labels each band
again and yields which of its pixels are kept. `hysteresis` is the whole-map reference it must equal.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from utils.checks import check_int, check_range

__all__ = ["Hysteresis", "hysteresis", "hysteresis_bands"]

_EIGHT = np.ones((3, 3), dtype=bool)  # 8-connectivity: a diagonal stroke of ink is one component, not many


@dataclass(frozen=True)
class Hysteresis:
    """A hysteresis rule: grow seeds ``>= high`` through pixels ``>= low``; drop components under ``min_area``.

    Attributes:
        high: Seed threshold, in (0, 1].
        low: Growth threshold, in (0, high].
        min_area: Components with fewer pixels are dropped (>= 0; 0 and 1 keep every seeded component).
    """

    high: float
    low: float
    min_area: int = 0

    def __post_init__(self) -> None:
        check_range("Hysteresis high", self.high, 0.0, 1.0, low_open=True)
        check_range("Hysteresis low", self.low, 0.0, self.high, low_open=True)
        check_int("Hysteresis min_area", self.min_area, minimum=0, allow_numpy=True)


def _check_prob(prob: np.ndarray, where: str) -> np.ndarray:
    """Returns ``prob`` as an array after checking it is float and has no NaN (``where`` names it in messages)."""
    prob = np.asarray(prob)
    # An integer map (e.g. uint8 0..255) compared with thresholds in (0, 1] would pass silently and mean nothing.
    if not np.issubdtype(prob.dtype, np.floating):
        raise ValueError(f"{where}: probabilities must be float, got dtype {prob.dtype}")
    if np.isnan(prob).any():
        raise ValueError(f"{where}: probabilities hold NaN")
    return prob


def _label(prob: np.ndarray, rule: Hysteresis) -> tuple[np.ndarray, int, np.ndarray, np.ndarray]:
    """Labels ``prob >= low``; returns the labels, their count, and per label (index 0: background) area and seed."""
    labels, count = ndimage.label(prob >= rule.low, structure=_EIGHT)
    area = np.bincount(labels.ravel(), minlength=count + 1)
    # Seeds are ``>= high >= low``, hence always labelled; background (label 0) is cleared by the caller.
    seed = np.bincount(labels[prob >= rule.high], minlength=count + 1) > 0
    return labels, count, area, seed


def hysteresis(prob: np.ndarray, rule: Hysteresis) -> np.ndarray:
    """Hysteresis thresholding of a whole map in memory: the reference for `hysteresis_bands`.

    Args:
        prob: Float ``[H, W]`` ink probabilities in [0, 1].
        rule: The thresholds and minimum area.

    Returns:
        Bool ``[H, W]``: the pixels of the 8-connected components of ``prob >= low`` that hold a pixel ``>= high``
        and have at least ``min_area`` pixels.

    Raises:
        ValueError: ``prob`` is not 2-D, not float, or holds NaN.
    """
    prob = _check_prob(prob, "hysteresis prob")
    if prob.ndim != 2:
        raise ValueError(f"hysteresis prob must be 2-D [H, W], got shape {prob.shape}")
    labels, _, area, seed = _label(prob, rule)
    keep = seed & (area >= rule.min_area)
    keep[0] = False
    return keep[labels]


def _find(parent: np.ndarray, node: int) -> int:
    """Root of ``node``, halving the path on the way so later finds are short."""
    while parent[node] != node:
        parent[node] = parent[parent[node]]
        node = int(parent[node])
    return node


def _seam_pairs(above: np.ndarray, below: np.ndarray) -> np.ndarray:
    """Unique ``[K, 2]`` pairs of global labels touching across a seam (8-connected): ``above`` over ``below``."""
    width = len(above)
    pairs = [np.stack([above, below], axis=1)]
    if width > 1:  # diagonal neighbours: down-right and down-left
        pairs.append(np.stack([above[:-1], below[1:]], axis=1))
        pairs.append(np.stack([above[1:], below[:-1]], axis=1))
    stacked = np.concatenate(pairs)
    stacked = stacked[(stacked[:, 0] > 0) & (stacked[:, 1] > 0)]
    return np.unique(stacked, axis=0)


def hysteresis_bands(
    read_rows: Callable[[int, int], np.ndarray], shape: tuple[int, int], rule: Hysteresis, band_rows: int = 1024
) -> Iterator[tuple[int, int, np.ndarray]]:
    """Hysteresis thresholding of a map too large for memory, read and yielded in bands of rows, top to bottom.

    Components are 8-connected, as in `hysteresis`. Pass 1 reads each band once, labels it and joins labels
    across the seam with the band above; pass 2 reads each band again (same band boundaries), labels it again
    and yields it, so ``read_rows`` must return the same values both times. Memory: O(band_rows x W + number of
    components). Arguments are checked at the call, before anything is read.

    Args:
        read_rows: ``read_rows(start, stop)`` returns the float probabilities of rows ``[start, stop)`` as an array
            ``[stop - start, W]``; called twice per band, only for rows inside the map.
        shape: ``(H, W)`` of the map.
        rule: The thresholds and minimum area.
        band_rows: Rows per band (the last band may be shorter).

    Returns:
        An iterator of ``(start, stop, keep)``: ``keep`` is bool ``[stop - start, W]``, equal to
        ``hysteresis(whole map, rule)[start:stop]``.

    Raises:
        ValueError: ``shape`` is not two positive integers or ``band_rows < 1`` (at the call); while iterating,
            ``read_rows`` returns the wrong shape, a non-float array or NaN, or different values in pass 2.
    """
    if not isinstance(shape, tuple | list) or len(shape) != 2:
        raise ValueError(f"hysteresis_bands shape must be (H, W), got {shape!r}")
    height = check_int("hysteresis_bands shape[0] (H)", shape[0], minimum=1, allow_numpy=True)
    width = check_int("hysteresis_bands shape[1] (W)", shape[1], minimum=1, allow_numpy=True)
    band_rows = check_int("hysteresis_bands band_rows", band_rows, minimum=1, allow_numpy=True)
    bands = [(start, min(start + band_rows, height)) for start in range(0, height, band_rows)]
    return _bands(read_rows, width, rule, bands)


def _read(read_rows: Callable[[int, int], np.ndarray], start: int, stop: int, width: int) -> np.ndarray:
    """Reads rows ``[start, stop)`` and checks their shape, dtype and values."""
    prob = _check_prob(read_rows(start, stop), f"read_rows({start}, {stop})")
    if prob.shape != (stop - start, width):
        raise ValueError(f"read_rows({start}, {stop}) returned shape {prob.shape}, expected {(stop - start, width)}")
    return prob


def _bands(
    read_rows: Callable[[int, int], np.ndarray], width: int, rule: Hysteresis, bands: list[tuple[int, int]]
) -> Iterator[tuple[int, int, np.ndarray]]:
    """The two passes of `hysteresis_bands` (a generator, so its checks run at the call, not at the first band)."""
    # Global labels are 1-based (0 is background throughout); a band's label j is global offsets[i] + j.
    offsets, counts, areas, seeds = [], [], [np.zeros(1, np.int64)], [np.zeros(1, bool)]
    parent = np.zeros(1, np.int64)
    above = np.zeros(width, np.int64)  # global labels of the previous band's last row: all pass 1 carries over
    total = 0
    for start, stop in bands:
        labels, count, area, seed = _label(_read(read_rows, start, stop, width), rule)
        offsets.append(total)
        counts.append(count)
        areas.append(area[1:])
        seeds.append(seed[1:])
        if len(parent) < total + count + 1:  # grow by doubling, so appending stays amortised O(1) per label
            grown = np.arange(max(2 * len(parent), total + count + 1), dtype=np.int64)
            grown[: len(parent)] = parent
            parent = grown
        first = np.where(labels[0] > 0, labels[0] + total, 0)
        for a, b in _seam_pairs(above, first):  # loops over pairs of touching labels, never over pixels
            root_a, root_b = _find(parent, int(a)), _find(parent, int(b))
            if root_a != root_b:
                parent[max(root_a, root_b)] = min(root_a, root_b)
        last = labels[-1]
        above = np.where(last > 0, last + total, 0)
        total += count
    # Resolve every label to its root by pointer jumping (vectorised), then sum area and seeds per root.
    root = parent[: total + 1]
    while not np.array_equal(root[root], root):
        root = root[root]
    area_all, seed_all = np.concatenate(areas), np.concatenate(seeds)
    root_area = np.bincount(root, weights=area_all, minlength=total + 1)
    root_seed = np.bincount(root, weights=seed_all, minlength=total + 1) > 0
    keep_root = root_seed & (root_area >= rule.min_area)
    keep_root[0] = False
    del areas, seeds, area_all, seed_all
    for (start, stop), offset, count in zip(bands, offsets, counts):
        labels, again, _, _ = _label(_read(read_rows, start, stop, width), rule)
        if again != count:
            raise ValueError(
                f"read_rows({start}, {stop}) returned different values in pass 2: {again} components, not {count}"
            )
        lookup = keep_root[root[offset : offset + count + 1]]  # band label -> global -> root -> kept
        lookup[0] = False  # band label 0 is background, not global label ``offset``
        yield start, stop, lookup[labels]
