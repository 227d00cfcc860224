"""Whole-segment prediction in row bands: which bands exist, which tiles touch them, which rank predicts them.

A segment is cut into full-width row bands of about ``band_pixels`` pixels. A band is finished once every tile
that overlaps it has been blended in; it is then written and dropped, so the memory of a prediction does not grow
with the segment. Each rank gets a contiguous run of the bands still to do (balanced by tile count), and predicts
every tile overlapping its bands in row order: inside a run a tile is computed once and shared by the two bands
it straddles; only at the edge of a run is a tile computed by two ranks. A band's value depends only on the tiles
that overlap it, blended in row-major order, so the output is the same however the bands are shared out and
whichever bands an earlier, interrupted run already wrote. Plain numpy: no Trainer, no files.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from utils.checks import check_int

# Pixels per band: two bands in flight hold 2 x 9 bytes per pixel (float32 sum and weight, uint8 valid), ~36 MiB.
DEFAULT_BAND_PIXELS = 1 << 21
MIN_BAND_ROWS = 16


def band_height(width: int, band_pixels: int = DEFAULT_BAND_PIXELS) -> int:
    """Rows per band: about ``band_pixels / width``, at least `MIN_BAND_ROWS`, a multiple of 16 when larger."""
    check_int("band_pixels", band_pixels, minimum=1)
    rows = max(MIN_BAND_ROWS, band_pixels // max(1, width))
    return rows // 16 * 16


@dataclass(frozen=True)
class SegmentBands:
    """The row bands of one segment: band ``k`` covers rows ``[k * rows, min(H, (k + 1) * rows))``."""

    fragment_id: str
    shape: tuple[int, int]
    rows: int

    @property
    def count(self) -> int:
        """Number of bands."""
        return -(-self.shape[0] // self.rows)

    def band(self, k: int) -> tuple[int, int]:
        """``(r0, r1)``: the rows of band ``k``."""
        if not 0 <= k < self.count:
            raise ValueError(f"band {k} outside segment {self.fragment_id!r} ({self.count} bands)")
        return k * self.rows, min(self.shape[0], (k + 1) * self.rows)

    def touched(self, y: int, tile_size: int) -> range:
        """The bands a tile whose top row is ``y`` overlaps."""
        last = min(self.shape[0], y + tile_size) - 1
        return range(y // self.rows, last // self.rows + 1)


@dataclass
class RankPlan:
    """What one rank predicts.

    Attributes:
        indices: Tile indices (into the prediction windows) this rank predicts, in row-major order per segment.
        bands: ``{fragment_id: {band: number of this rank's tiles overlapping it}}`` for the bands this rank
            finishes and writes (a band no tile reaches has count 0: it is written empty).
        filler: True when the rank has nothing to do and `indices` holds one tile only so that it runs the same
            hooks as the others (its probabilities go nowhere).
    """

    indices: np.ndarray
    bands: dict[str, dict[int, int]] = field(default_factory=dict)
    filler: bool = False


def _band_span(segment: SegmentBands, ys: np.ndarray, tile_size: int) -> tuple[np.ndarray, np.ndarray]:
    """The first and last band each tile with top row in ``ys`` overlaps."""
    return ys // segment.rows, (np.minimum(segment.shape[0], ys + tile_size) - 1) // segment.rows


def tiles_per_band(segment: SegmentBands, ys: np.ndarray, tile_size: int) -> np.ndarray:
    """How many tiles with top rows ``ys`` overlap each band of the segment: int64 ``[count]``."""
    first, last = _band_span(segment, ys, tile_size)
    counts = np.zeros(segment.count + 1, dtype=np.int64)
    np.add.at(counts, first, 1)
    np.add.at(counts, last + 1, -1)
    return np.cumsum(counts)[:-1]


def plan_rank(
    segments: Sequence[SegmentBands],
    windows: np.ndarray,
    tile_size: int,
    done: dict[str, Iterable[int]],
    rank: int = 0,
    world: int = 1,
) -> RankPlan:
    """The bands and tiles of one rank.

    Args:
        segments: The bands of each segment; ``windows[:, 0]`` indexes this list.
        windows: int ``[N, 3]``: segment index, y, x of each prediction tile (top-left corner).
        tile_size: Tile side in pixels.
        done: ``{fragment_id: bands already written}`` (an interrupted run's); they are neither predicted nor assigned.
        rank: This process's rank.
        world: Number of processes.

    Raises:
        ValueError: A window outside its segment or a rank outside ``[0, world)``.
    """
    if not 0 <= rank < world:
        raise ValueError(f"rank {rank} outside world of {world}")
    windows = np.asarray(windows, dtype=np.int64).reshape(-1, 3)
    pending: list[tuple[int, int, int]] = []  # (segment, band, tiles overlapping it)
    for s, segment in enumerate(segments):
        ys = windows[windows[:, 0] == s, 1]
        if len(ys) and (ys.min() < 0 or ys.max() >= segment.shape[0]):
            raise ValueError(f"a prediction tile of {segment.fragment_id!r} starts outside its {segment.shape[0]} rows")
        counts = tiles_per_band(segment, ys, tile_size)
        finished = set(done.get(segment.fragment_id, ()))
        pending += [(s, k, int(counts[k])) for k in range(segment.count) if k not in finished]
    owners = _owners([c for _, _, c in pending], world)
    mine = [(s, k, c) for (s, k, c), owner in zip(pending, owners) if owner == rank]
    owned = {s: set() for s in range(len(segments))}
    for s, k, _ in mine:
        owned[s].add(k)
    keep = np.zeros(len(windows), dtype=bool)
    for s, segment in enumerate(segments):
        if not owned[s]:
            continue
        rows = np.nonzero(windows[:, 0] == s)[0]
        first, last = _band_span(segment, windows[rows, 1], tile_size)
        wanted = np.zeros(segment.count + 1, dtype=bool)
        wanted[sorted(owned[s])] = True
        # A tile is needed when any band between its first and last is owned (bands are contiguous ranges).
        cumulative = np.concatenate([[0], np.cumsum(wanted)])
        keep[rows] = cumulative[last + 1] - cumulative[first] > 0
    indices = np.nonzero(keep)[0]
    indices = indices[np.lexsort((windows[indices, 2], windows[indices, 1], windows[indices, 0]))]
    # Every tile overlapping an owned band is among this rank's tiles, so its count is the segment's count.
    bands: dict[str, dict[int, int]] = {}
    for s, k, count in mine:
        bands.setdefault(segments[s].fragment_id, {})[k] = count
    if len(indices) == 0 and len(windows):
        return RankPlan(np.zeros(1, dtype=np.int64), bands, filler=True)
    return RankPlan(indices.astype(np.int64), bands)


def _owners(weights: Sequence[int], world: int) -> list[int]:
    """Contiguous, tile-balanced owners of the pending bands: each rank gets the bands whose middle tile falls in
    its share of all pending tiles (evenly by count when no band has tiles)."""
    n = len(weights)
    if n == 0:
        return []
    w = np.asarray(weights, dtype=np.float64)
    if w.sum() == 0:
        w = np.ones(n)
    middle = np.cumsum(w) - w / 2
    return np.minimum(world - 1, (middle * world / w.sum()).astype(np.int64)).tolist()


@dataclass(frozen=True)
class PredictionLayout:
    """What a data module tells the prediction writer about the segments it will predict.

    Attributes:
        fragment_ids: One id per segment; ``windows[:, 0]`` indexes this list.
        shapes: ``(H, W)`` of each segment.
        windows: int ``[N, 3]``: segment index, y, x of every prediction tile, as the predict dataset indexes them.
        tile_size: Tile side in pixels.
        sources: Per segment, what else decides its pixels (volume, slice window, depth order), JSON-serialisable;
            band files computed for other sources are not reused.
    """

    fragment_ids: list[str]
    shapes: list[tuple[int, int]]
    windows: np.ndarray
    tile_size: int
    sources: list[dict] = field(default_factory=list)
