"""Tile windows inside the papyrus mask, and their assignment to train / val / test.

Two kinds of split, freely mixed:

* by fragment: a fragment named only in ``val_fragments`` is validated whole;
* by region: a fragment that trains *and* is held out (named in both lists, or the default when no list is
  given) is cut into ``folds`` bands along its longer axis. Band ``val_fold`` (and ``test_fold``) is held
  out; training windows keep ``gap`` pixels away from every held-out band, so no pixel of a held-out tile
  is ever in a training tile, however the training windows are jittered.
* by validation mask: a fragment with a validation mask (``<id>_validation_mask``) validates inside it in place
  of band ``val_fold``, and its pixels never train (they count in no training loss, as the challenge's monorepo
  does); the windows' scope (`SCOPE_INSIDE`, `SCOPE_OUTSIDE`) says which pixels of a window count.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from utils.checks import check_int

STAGES = ("train", "val", "test")
SCOPE_ALL, SCOPE_INSIDE, SCOPE_OUTSIDE = 0, 1, 2  # pixels of a window that count: all, in / out of validation


@dataclass(frozen=True)
class Region:
    """Where a stage's windows of one fragment may lie: along ``axis``, inside one of ``intervals``."""

    fragment: int
    axis: int
    intervals: tuple[tuple[int, int], ...]
    scope: int = SCOPE_ALL


@dataclass
class TileSet:
    """Windows of one stage.

    Attributes:
        windows: int64 ``[N, 3]``: fragment index, y, x (top-left corner).
        bounds: int64 ``[N, 4]``: the range the top-left corner may be jittered to, ``y_min, y_max, x_min, x_max``.
        has_ink: bool ``[N]``: the window holds at least one ink pixel (False when there are no labels).
        scope: int8 ``[N]``: which of the window's pixels count (`SCOPE_ALL`, `SCOPE_INSIDE` or `SCOPE_OUTSIDE`
            the fragment's validation mask); default all.
    """

    windows: np.ndarray
    bounds: np.ndarray
    has_ink: np.ndarray
    scope: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.scope is None:
            self.scope = np.zeros(len(self.windows), dtype=np.int8)

    def __len__(self) -> int:
        return len(self.windows)

    @staticmethod
    def concat(parts: Sequence[TileSet]) -> TileSet:
        """Joins the tile sets of several fragments."""
        if not parts:
            return TileSet(np.zeros((0, 3), np.int64), np.zeros((0, 4), np.int64), np.zeros(0, bool))
        return TileSet(
            np.concatenate([p.windows for p in parts]),
            np.concatenate([p.bounds for p in parts]),
            np.concatenate([p.has_ink for p in parts]),
            np.concatenate([p.scope for p in parts]),
        )


def grid_positions(start: int, stop: int, tile: int, stride: int) -> np.ndarray:
    """Window starts covering ``[start, stop)``: every ``stride``, plus one flush with ``stop``. Empty if too short."""
    check_int("stride", stride, minimum=1, allow_numpy=True)
    if stop - start < tile:
        return np.zeros(0, dtype=np.int64)
    positions = np.arange(start, stop - tile + 1, stride, dtype=np.int64)
    if positions[-1] != stop - tile:
        positions = np.append(positions, stop - tile)
    return positions


def window_sums(
    binary: np.ndarray,
    ys: np.ndarray,
    xs: np.ndarray,
    tile: int,
    *,
    within: np.ndarray | Sequence[np.ndarray] | None = None,
    without: Sequence[np.ndarray] = (),
) -> np.ndarray:
    """Counts of True pixels (of ``binary``, and of every ``within`` map, and of no ``without`` map) in each
    ``tile x tile`` window at rows ``ys`` x columns ``xs``: ``[len(ys), len(xs)]``.

    Works one band of rows at a time, so memory stays ``O(tile x W)`` even for the largest (memory-mapped) maps.
    """
    out = np.zeros((len(ys), len(xs)), dtype=np.int64)
    if within is None:
        within = ()
    elif isinstance(within, np.ndarray):
        within = (within,)
    for i, y in enumerate(ys):
        band = binary[y : y + tile]
        if within or without:
            band = np.array(band, dtype=bool)
            for other in within:
                band &= other[y : y + tile]
            for other in without:
                band &= ~other[y : y + tile]
        column_sums = band.sum(axis=0, dtype=np.int64)
        cumulative = np.concatenate([[0], np.cumsum(column_sums)])
        out[i] = cumulative[xs + tile] - cumulative[xs]
    return out


def band_edges(length: int, folds: int) -> np.ndarray:
    """Edges of ``folds`` equal bands over ``length`` pixels: ``folds + 1`` integers from 0 to length."""
    return np.round(np.linspace(0, length, folds + 1)).astype(np.int64)


def free_intervals(length: int, blocked: Sequence[tuple[int, int]]) -> tuple[tuple[int, int], ...]:
    """The parts of ``[0, length)`` outside every blocked interval."""
    intervals, cursor = [], 0
    for lo, hi in sorted((max(0, lo), min(length, hi)) for lo, hi in blocked):
        if lo > cursor:
            intervals.append((cursor, lo))
        cursor = max(cursor, hi)
    if cursor < length:
        intervals.append((cursor, length))
    return tuple(intervals)


def plan_regions(
    fragment_ids: Sequence[str],
    shapes: Sequence[tuple[int, int]],
    *,
    train_fragments: Sequence[str] | None,
    val_fragments: Sequence[str] | None,
    test_fragments: Sequence[str] | None,
    folds: int,
    val_fold: int,
    test_fold: int | None,
    gap: int,
    tile_size: int,
    has_validation: Sequence[bool] | None = None,
) -> dict[str, list[Region]]:
    """Decides, per stage, which part of which fragment it uses.

    With no list at all, every fragment is split by region (val band ``val_fold``, test band ``test_fold``
    if set). A fragment in the train list and in a held-out list is split by region too. A fragment named
    only in a held-out list is used whole for it. Without ``train_fragments``, every fragment not held out
    whole trains. A fragment with a validation mask (``has_validation``) that trains and validates validates
    inside the mask (every pixel of it, whatever ``val_fold``), and never trains there.

    Raises:
        ValueError: an unknown fragment name, a bad fold setting, or bands thinner than one tile.
    """
    known = set(fragment_ids)
    for setting, names in (
        ("train_fragments", train_fragments),
        ("val_fragments", val_fragments),
        ("test_fragments", test_fragments),
    ):
        unknown = sorted(set(names or ()) - known)
        if unknown:
            raise ValueError(f"{setting} names unknown fragment(s) {unknown}; found {sorted(known)}")
    if folds < 2:
        raise ValueError(f"folds={folds}: need at least 2 bands for a region split")
    for setting, fold in (("val_fold", val_fold), ("test_fold", test_fold)):
        if fold is not None and not 0 <= fold < folds:
            raise ValueError(f"{setting}={fold} is outside 0..{folds - 1} (folds={folds})")
    if test_fold is not None and test_fold == val_fold:
        raise ValueError(f"test_fold={test_fold} equals val_fold: the two held-out bands must differ")

    no_lists = train_fragments is None and val_fragments is None and test_fragments is None
    val_set, test_set = set(val_fragments or ()), set(test_fragments or ())
    if train_fragments is not None:
        train_set = set(train_fragments)
    elif no_lists:
        train_set = known
    else:
        train_set = known - val_set - test_set  # everything not held out whole

    plans: dict[str, list[Region]] = {stage: [] for stage in STAGES}
    validating = list(has_validation) if has_validation is not None else [False] * len(fragment_ids)
    for index, (name, (height, width)) in enumerate(zip(fragment_ids, shapes)):
        axis = 0 if height >= width else 1
        length = (height, width)[axis]
        whole = ((0, length),)
        in_train = name in train_set
        in_val = name in val_set or (no_lists and (val_fold is not None or validating[index]))
        in_test = name in test_set or (no_lists and test_fold is not None)
        if validating[index] and in_train:
            # The validation mask holds the validation region out: no band for it, and training skips its pixels.
            held = []
            if in_val:
                plans["val"].append(Region(index, axis, whole, SCOPE_INSIDE))
            if in_test:
                if test_fold is None:
                    raise ValueError(f"fragment '{name}' trains and is held out for test, but test_fold is not set")
                band = _held_band(name, axis, length, folds, test_fold, tile_size)
                plans["test"].append(Region(index, axis, (band,)))
                held.append((band[0] - gap, band[1] + gap))
            plans["train"].append(Region(index, axis, free_intervals(length, held), SCOPE_OUTSIDE))
        elif in_train and (in_val or in_test):
            held: list[tuple[int, int]] = []
            for stage, fold, wanted in (("val", val_fold, in_val), ("test", test_fold, in_test)):
                if not wanted:
                    continue
                if fold is None:
                    raise ValueError(
                        f"fragment '{name}' trains and is held out for {stage}, but {stage}_fold is not set"
                    )
                band = _held_band(name, axis, length, folds, fold, tile_size)
                plans[stage].append(Region(index, axis, (band,)))
                held.append((band[0] - gap, band[1] + gap))
            plans["train"].append(Region(index, axis, free_intervals(length, held)))
        else:
            for stage, used in (("train", in_train), ("val", in_val), ("test", in_test)):
                if used:
                    plans[stage].append(Region(index, axis, whole))
    return plans


def _held_band(name: str, axis: int, length: int, folds: int, fold: int, tile_size: int) -> tuple[int, int]:
    """Band ``fold`` of ``folds`` along ``length`` px; raises when thinner than one tile."""
    edges = band_edges(length, folds)
    band = (int(edges[fold]), int(edges[fold + 1]))
    if band[1] - band[0] < tile_size:
        raise ValueError(
            f"fragment '{name}': band {fold} of folds={folds} is {band[1] - band[0]} px along its "
            f"{'height' if axis == 0 else 'width'}, thinner than tile_size={tile_size}; lower folds or tile_size"
        )
    return band


def region_tiles(
    region: Region,
    mask: np.ndarray,
    labels: np.ndarray | None,
    *,
    tile_size: int,
    stride: int,
    min_valid_fraction: float,
    supervision: np.ndarray | None = None,
    validation: np.ndarray | None = None,
) -> TileSet:
    """Windows of ``tile_size`` at ``stride`` inside a region whose valid fraction reaches the minimum.

    A window's valid pixels are in the mask, in the supervision map when there is one, and inside (or outside)
    the validation map as the region's scope says. ``min_valid_fraction=0`` keeps every window touching a valid
    pixel, so held-out windows cover every one.
    """
    height, width = mask.shape
    within = [m for m in (supervision,) if m is not None]
    without = []
    if validation is not None and region.scope == SCOPE_INSIDE:
        within.append(validation)
    elif validation is not None and region.scope == SCOPE_OUTSIDE:
        without.append(validation)
    parts = []
    for lo, hi in region.intervals:
        if region.axis == 0:
            ys, xs = grid_positions(lo, hi, tile_size, stride), grid_positions(0, width, tile_size, stride)
            y_bounds, x_bounds = (lo, hi - tile_size), (0, width - tile_size)
        else:
            ys, xs = grid_positions(0, height, tile_size, stride), grid_positions(lo, hi, tile_size, stride)
            y_bounds, x_bounds = (0, height - tile_size), (lo, hi - tile_size)
        if len(ys) == 0 or len(xs) == 0:
            continue
        counts = window_sums(mask, ys, xs, tile_size, within=within, without=without)
        area = tile_size * tile_size
        keep = counts >= max(1, int(np.ceil(min_valid_fraction * area)))
        iy, ix = np.nonzero(keep)
        windows = np.stack([np.full(len(iy), region.fragment), ys[iy], xs[ix]], axis=1).astype(np.int64)
        bounds = np.tile(np.array([*y_bounds, *x_bounds], dtype=np.int64), (len(iy), 1))
        if labels is not None:
            has_ink = window_sums(labels, ys, xs, tile_size, within=[mask, *within], without=without)[iy, ix] > 0
        else:
            has_ink = np.zeros(len(iy), dtype=bool)
        parts.append(TileSet(windows, bounds, has_ink, np.full(len(iy), region.scope, dtype=np.int8)))
    return TileSet.concat(parts)


def jitter_windows(tiles: TileSet, indices: np.ndarray, amount: int, rng: np.random.Generator) -> np.ndarray:
    """Top-left corners of ``tiles.windows[indices]`` moved by up to ±``amount`` px, kept inside their bounds."""
    chosen = tiles.windows[indices, 1:].copy()
    if amount > 0:
        chosen += rng.integers(-amount, amount + 1, size=chosen.shape)
        bounds = tiles.bounds[indices]
        chosen[:, 0] = np.clip(chosen[:, 0], bounds[:, 0], bounds[:, 1])
        chosen[:, 1] = np.clip(chosen[:, 1], bounds[:, 2], bounds[:, 3])
    return chosen
