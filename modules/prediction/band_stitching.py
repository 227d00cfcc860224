"""BandStitcher: blends prediction tiles into row bands and hands each band over as soon as it is complete.

The whole-segment counterpart of `modules.evaluation.stitching.FragmentStitcher`: the same window-weighted mean
at full resolution, but only the bands that tiles currently overlap are held (tiles arrive in row order), so memory
is bounded by a few bands whatever the segment's size. Which bands this process finishes, and how many tiles
overlap each, come from `modules.prediction.band_plan.plan_rank`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np

from modules.prediction.band_plan import SegmentBands

# (fragment id, band index, rows (r0, r1), probability float32 [n, W], valid bool [n, W])
BandSink = Callable[[str, int, tuple[int, int], np.ndarray, np.ndarray], None]


class BandStitcher:
    """Accumulates ``window × prob`` and ``window`` per band; a band whose last tile arrived goes to ``sink``.

    Args:
        segments: ``{fragment_id: SegmentBands}``.
        counts: ``{fragment_id: {band: tiles overlapping it}}``: the bands this process finishes.
        weights: float32 ``[T, T]`` blending window (`modules.evaluation.windows.window_weights`).
        sink: Called once per finished band, in the order bands finish, with the weighted-mean probability (0
            where no tile reached) and ``valid`` (covered by a tile and inside the tile's valid map).
    """

    def __init__(
        self,
        segments: Mapping[str, SegmentBands],
        counts: Mapping[str, Mapping[int, int]],
        weights: np.ndarray,
        sink: BandSink,
    ) -> None:
        self.segments = dict(segments)
        self.remaining = {fid: dict(bands) for fid, bands in counts.items()}
        self.weights = np.asarray(weights, dtype=np.float32)
        self.tile_size = self.weights.shape[0]
        self.sink = sink
        self._open: dict[tuple[str, int], tuple[np.ndarray, np.ndarray, np.ndarray]] = {}

    @property
    def open_bands(self) -> int:
        """Bands currently held in memory."""
        return len(self._open)

    def add(self, fragment_ids: Sequence[str], yx: np.ndarray, probs: np.ndarray, valid: np.ndarray) -> None:
        """Blends a batch of tiles: ``yx`` int ``[B, 2]``, ``probs`` and ``valid`` ``[B, T, T]``."""
        t = self.tile_size
        for i, fid in enumerate(fragment_ids):
            remaining = self.remaining.get(fid)
            if not remaining:
                continue
            segment = self.segments[fid]
            y, x = int(yx[i][0]), int(yx[i][1])
            height, width = segment.shape
            dx = min(t, width - x)
            for k in segment.touched(y, t):
                if remaining.get(k, 0) <= 0:
                    continue
                r0, r1 = segment.band(k)
                prob_sum, weight, flags = self._band(fid, k, r1 - r0, width)
                lo, hi = max(r0, y), min(r1, y + t)
                rows = slice(lo - r0, hi - r0)
                tile_rows = slice(lo - y, hi - y)
                win = self.weights[tile_rows, :dx]
                prob_sum[rows, x : x + dx] += win * probs[i, tile_rows, :dx]
                weight[rows, x : x + dx] += win
                flags[rows, x : x + dx] |= valid[i, tile_rows, :dx] > 0.5
                remaining[k] -= 1
                if remaining[k] == 0:
                    self._finish(fid, k)

    def finish(self) -> None:
        """Hands over the bands no tile reaches (written empty); raises if a band still waits for tiles.

        Raises:
            RuntimeError: Fewer tiles arrived than the plan counted for a band.
        """
        for fid, remaining in self.remaining.items():
            for k, left in sorted(remaining.items()):
                if left > 0:
                    raise RuntimeError(
                        f"band {k} of {fid!r} is missing {left} tile(s): the prediction tiles did not match the plan"
                    )
                if (fid, k) not in self._open:
                    r0, r1 = self.segments[fid].band(k)
                    self._band(fid, k, r1 - r0, self.segments[fid].shape[1])
                self._finish(fid, k)
            remaining.clear()

    def _band(self, fid: str, k: int, rows: int, width: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        band = self._open.get((fid, k))
        if band is None:
            band = self._open[(fid, k)] = (
                np.zeros((rows, width), np.float32),
                np.zeros((rows, width), np.float32),
                np.zeros((rows, width), np.bool_),
            )
        return band

    def _finish(self, fid: str, k: int) -> None:
        prob_sum, weight, flags = self._open.pop((fid, k))
        self.remaining[fid].pop(k, None)
        covered = weight > 0
        # Uncovered pixels have a zero sum as well: dividing by 1 there gives 0.
        np.divide(prob_sum, np.where(covered, weight, np.float32(1)), out=prob_sum)
        del weight
        self.sink(fid, k, self.segments[fid].band(k), prob_sum, flags & covered)
