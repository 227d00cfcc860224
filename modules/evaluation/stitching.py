"""Blending overlapping tile predictions back into whole-fragment maps (TTA lives in `modules.evaluation.tta`).

The metric of the task is F0.5 over the whole fragment, so validation, test and prediction tiles are
stitched into one map per fragment before anything is scored or written. Each tile's probabilities
are multiplied by a window that fades towards the tile border (tile borders see less context and
predict worse), summed into the fragment map, and divided by the summed window weights, so that
every covered pixel gets a proper weighted mean whatever the overlap.

Only the box a stage evaluates is allocated (``boxes``: a region split's held-out band, say; the whole
fragment when no box is given). For a box of ``h × w`` full-resolution pixels the stitcher holds:

- the probability at ``1 / stride`` resolution, as a float32 sum of ``window × prob`` and a float32 sum of
  window weights: ``8 × ceil(h / s) × ceil(w / s)`` bytes;
- ``valid`` and ``label`` at full resolution in one uint8 (bit 0: inside the mask and covered by a tile;
  bit 1: ink inside valid): ``h × w`` bytes, so scores count full-resolution pixels whatever the stride
  (`bands` upsamples the probability row band by row band, as the prediction writer does).

`finish` turns the sums into the probability map in place and frees the weights before any map for the
callbacks is built; `result` (with ``release``) then frees the flags before it converts the probabilities.
The measured peak is in docs/BENCHMARKS.md ("Stitching memory", ``scripts/benchmark.py --stitch-memory``).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

from modules.evaluation.distributed import all_reduce_chunked, comm_device
from modules.evaluation.resample import BAND_PIXELS, band_rows, prob_band
from modules.evaluation.windows import WINDOW_KINDS, check_tile_and_stride, window_weights

__all__ = ["WINDOW_KINDS", "FragmentStitcher", "window_weights"]

# 16 Mi elements: 64 MB of float32 per all_reduce call, small next to the maps, large enough to keep
# the number of collective calls (and their latency) low.
DEFAULT_REDUCE_CHUNK_NUMEL = 1 << 24
# Full-resolution pixels per block when building maps from the accumulators (bounds the temporaries).
_BLOCK_NUMEL = 1 << 22
VALID_BIT, LABEL_BIT = 1, 2
Box = tuple[int, int, int, int]


def _pool(x: torch.Tensor, stride: int) -> torch.Tensor:
    return x if stride == 1 else F.avg_pool2d(x, stride)


def _check_shape(fid: object, shape: object) -> tuple[int, int]:
    if not isinstance(fid, str):
        raise ValueError(f"fragment ids must be str, got {fid!r}")
    dims = tuple(shape)  # type: ignore[call-overload]
    if (
        len(dims) != 2
        or not all(isinstance(d, int | np.integer) and not isinstance(d, bool) for d in dims)
        or min(dims) <= 0
    ):
        raise ValueError(f"shape of fragment {fid!r} must be two positive ints (H, W), got {shape!r}")
    return int(dims[0]), int(dims[1])


def _aligned_box(fid: str, full: tuple[int, int], box: object, stride: int) -> Box:
    """``(y0, x0, y1, x1)`` inside the fragment, its origin floored to the stride grid."""
    if box is None:
        return (0, 0, *full)
    y0, x0, y1, x1 = (int(v) for v in box)  # type: ignore[attr-defined]
    if not (0 <= y0 < y1 <= full[0] and 0 <= x0 < x1 <= full[1]):
        raise ValueError(
            f"box {(y0, x0, y1, x1)} of fragment {fid!r} must lie inside its shape {full} (y0, x0, y1, x1)"
        )
    return (y0 // stride * stride, x0 // stride * stride, y1, x1)


def _majority(flags: torch.Tensor, bit: int, stride: int) -> torch.Tensor:
    """bool map at ``1 / stride``: at least half of each block (padding beyond the edge counts as 0) has `bit`."""
    on = (flags & bit).to(torch.float32)
    if stride == 1:
        return on > 0
    h, w = on.shape
    on = F.pad(on[None, None], (0, -w % stride, 0, -h % stride))
    return F.avg_pool2d(on, stride)[0, 0] >= 0.5


class FragmentStitcher:
    """Accumulates overlapping tile probabilities into fragment maps; ``valid`` and ``label`` at full resolution.

    Per fragment, only the box to evaluate is kept (``boxes``; the whole fragment by default), its origin
    floored to the stride grid. Probabilities are stored at ``ceil(h / stride) × ceil(w / stride)`` pixels of the
    box (stored pixel ``(i, j)`` stands for the full-resolution block starting at ``(y0 + i * stride, x0 + j *
    stride)``), average-pooled by ``stride`` before blending. ``valid`` and ``label`` are kept at full resolution.

    Tile corners that are not on the stride grid are floored to it for the probabilities, i.e. the pooled
    tile is placed up to ``stride - 1`` full-resolution pixels up/left of where it belongs (flags are
    placed exactly). Data modules should use tile steps that are multiples of the stride.

    Tiles may overhang the bottom/right edge of the box (data modules pad fragments smaller than a tile);
    the overhang is dropped. A tile corner outside the box is an error.

    Typical use on every rank: ``add`` each eval batch, ``reduce`` once at epoch end, ``finish``, then ``bands``
    to score and ``result`` for the callbacks' maps.

    Args:
        shapes: ``{fragment_id: (H, W)}`` in full-resolution pixels; must be identical on every rank.
        tile_size: Tile side ``T`` in full-resolution pixels.
        window: Blending window kind, see :func:`window_weights`.
        stride: Downsampling factor of the stored probabilities (1, 2, 4, …), must divide ``tile_size``.
        device: Where the accumulators live (CPU keeps large maps off the accelerator).
        boxes: ``{fragment_id: (y0, x0, y1, x1)}``, the part of each fragment to allocate; identical on every
            rank. Fragments without a box are allocated whole.

    Raises:
        ValueError: Bad shapes, boxes, tile size, stride or window kind.
    """

    def __init__(
        self,
        shapes: dict[str, tuple[int, int]],
        tile_size: int,
        *,
        window: str = "hann",
        stride: int = 1,
        device: torch.device | str = "cpu",
        boxes: dict[str, Box] | None = None,
    ) -> None:
        check_tile_and_stride(tile_size, stride)
        self.tile_size = tile_size
        self.stride = stride
        self.device = torch.device(device)
        self.weights = window_weights(tile_size, window, stride).to(self.device)
        self.window = window
        boxes = dict(boxes or {})
        unknown = sorted(set(boxes) - set(shapes))
        if unknown:
            raise ValueError(f"boxes name fragment(s) {unknown} that are not among the shapes {sorted(shapes)}")
        self._shapes: dict[str, tuple[int, int]] = {}
        self._boxes: dict[str, Box] = {}
        self._stored_shapes: dict[str, tuple[int, int]] = {}
        for fid, shape in shapes.items():
            full = _check_shape(fid, shape)
            y0, x0, y1, x1 = self._boxes[fid] = _aligned_box(fid, full, boxes.get(fid), stride)
            self._shapes[fid] = full
            self._stored_shapes[fid] = (-(-(y1 - y0) // stride), -(-(x1 - x0) // stride))
        # prob: sum of window * prob, the mean once finished; weight: sum of windows (freed by finish);
        # flags: uint8 VALID_BIT | LABEL_BIT at full resolution; valid: bool at 1/stride, built by finish.
        self._prob: dict[str, torch.Tensor] = {}
        self._weight: dict[str, torch.Tensor] = {}
        self._flags: dict[str, torch.Tensor] = {}
        self._valid: dict[str, torch.Tensor] = {}
        self._labelled: set[str] = set()
        self._reduced = self._finished = False
        self.reset()

    @property
    def fragment_ids(self) -> list[str]:
        """Fragment ids in the order given to the constructor."""
        return list(self._shapes)

    def stored_shape(self, fragment_id: str) -> tuple[int, int]:
        """Shape ``(ceil(h / stride), ceil(w / stride))`` of the probability map of the fragment's box."""
        self._check_id(fragment_id)
        return self._stored_shapes[fragment_id]

    def box(self, fragment_id: str) -> Box:
        """``(y0, x0, y1, x1)``: the full-resolution pixels the fragment's maps cover (``y0``, ``x0`` on the grid)."""
        self._check_id(fragment_id)
        return self._boxes[fragment_id]

    def labelled(self, fragment_id: str) -> bool:
        """Whether labels were added for the fragment (on any rank, after `reduce`)."""
        self._check_id(fragment_id)
        return fragment_id in self._labelled

    def reset(self) -> None:
        """Frees and reallocates zeroed accumulators so the stitcher can be reused."""
        for store in (self._prob, self._weight, self._flags, self._valid):
            store.clear()
        for fid, stored in self._stored_shapes.items():
            y0, x0, y1, x1 = self._boxes[fid]
            self._prob[fid] = torch.zeros(stored, dtype=torch.float32, device=self.device)
            self._weight[fid] = torch.zeros(stored, dtype=torch.float32, device=self.device)
            self._flags[fid] = torch.zeros((y1 - y0, x1 - x0), dtype=torch.uint8, device=self.device)
        self._labelled.clear()
        self._reduced = self._finished = False

    def _check_id(self, fragment_id: str) -> None:
        if fragment_id not in self._shapes:
            raise ValueError(f"unknown fragment id {fragment_id!r}; the stitcher knows {sorted(self._shapes)}")

    def _check_tile_tensor(self, name: str, x: torch.Tensor, batch: int) -> None:
        expected = (batch, 1, self.tile_size, self.tile_size)
        if not isinstance(x, torch.Tensor) or tuple(x.shape) != expected:
            got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"{name} must be a tensor of shape {list(expected)} (B, 1, T, T), got {got}")

    def _check_corners(self, fragment_ids: list[str], corners: list[tuple[int, int]]) -> None:
        for fid, (y, x) in zip(fragment_ids, corners, strict=True):
            self._check_id(fid)
            y0, x0, y1, x1 = self._boxes[fid]
            if not (y0 <= y < y1 and x0 <= x < x1):
                h, w = self._shapes[fid]
                where = "" if (y0, x0, y1, x1) == (0, 0, h, w) else f" or its evaluated box {self._boxes[fid]}"
                raise ValueError(
                    f"tile at yx=({y}, {x}) lies outside fragment {fid!r} of shape ({h}, {w}){where}: "
                    "the corner must be inside"
                )

    def add(
        self,
        fragment_ids: list[str],
        yx: torch.Tensor,
        probs: torch.Tensor,
        valid: torch.Tensor,
        label: torch.Tensor | None = None,
    ) -> None:
        """Blends one batch of tile probabilities into the fragment maps.

        Args:
            fragment_ids: Fragment id of each tile (length ``B``).
            yx: ``[B, 2]`` top-left corner of each tile in full-resolution fragment pixels.
            probs: ``[B, 1, T, T]`` probabilities in ``[0, 1]`` (not logits).
            valid: ``[B, 1, T, T]`` 1 where the pixel is inside the papyrus mask and the fragment.
            label: Optional ``[B, 1, T, T]`` ink labels 0/1.

        Raises:
            ValueError: Mismatched shapes, an unknown fragment id or a tile corner outside its box.
            RuntimeError: Called after :meth:`reduce` or :meth:`finish` (call :meth:`reset` first).
        """
        if self._reduced or self._finished:
            raise RuntimeError("FragmentStitcher.add called after reduce() or finish(); call reset() first")
        batch = len(fragment_ids)
        if not isinstance(yx, torch.Tensor) or tuple(yx.shape) != (batch, 2):
            got = tuple(yx.shape) if isinstance(yx, torch.Tensor) else type(yx).__name__
            raise ValueError(f"yx must be a tensor of shape [{batch}, 2] (one corner per fragment id), got {got}")
        self._check_tile_tensor("probs", probs, batch)
        self._check_tile_tensor("valid", valid, batch)
        if label is not None:
            self._check_tile_tensor("label", label, batch)
        corners = [(int(y), int(x)) for y, x in yx.tolist()]
        # Validate the whole batch before touching the accumulators so a bad tile leaves no partial sums.
        self._check_corners(fragment_ids, corners)
        s, big = self.stride, self.tile_size
        p = _pool(probs.detach().to(self.device, torch.float32), s)
        codes = (valid.detach().to(self.device) > 0.5).to(torch.uint8)
        if label is not None:
            codes |= (label.detach().to(self.device) > 0.5).to(torch.uint8) * codes * LABEL_BIT
            self._labelled.update(fragment_ids)
        t = big // s
        for i, (fid, (y, x)) in enumerate(zip(fragment_ids, corners, strict=True)):
            by, bx, by1, bx1 = self._boxes[fid]
            hs, ws = self._stored_shapes[fid]
            ys, xs = (y - by) // s, (x - bx) // s
            dy, dx = min(t, hs - ys), min(t, ws - xs)
            win = self.weights[:dy, :dx]
            region = (slice(ys, ys + dy), slice(xs, xs + dx))
            self._prob[fid][region] += win * p[i, 0, :dy, :dx]
            self._weight[fid][region] += win
            fy, fx = y - by, x - bx
            fh, fw = min(big, by1 - y), min(big, bx1 - x)
            self._flags[fid][fy : fy + fh, fx : fx + fw] |= codes[i, 0, :fh, :fw]

    def reduce(self, chunk_numel: int = DEFAULT_REDUCE_CHUNK_NUMEL) -> None:
        """Combines the accumulators of all DDP ranks; a no-op without an initialised process group.

        Sums and weights are all-reduced with SUM, the flags with MAX, in chunks of ``chunk_numel`` elements so
        that no second full-size copy of a map is needed. MAX is the OR of the flags because a pixel's code is
        0, ``VALID_BIT`` or ``VALID_BIT | LABEL_BIT`` (ink only inside valid) and every rank that covers a pixel
        sees the same mask. Every rank must call it (a collective) and ends with the same maps, whichever rank
        saw which tile. Calling it again without new tiles does nothing.

        Args:
            chunk_numel: Elements per collective call.

        Raises:
            ValueError: Non-positive ``chunk_numel``.
        """
        if chunk_numel <= 0:
            raise ValueError(f"chunk_numel must be positive, got {chunk_numel}")
        if self._reduced:
            return
        self._reduced = True
        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return
        # Ranks iterate fragments in the same order regardless of how each built its dict.
        ids = sorted(self._shapes)
        # A rank may have seen labels for a fragment that another rank got no tiles of: agree.
        has_label = torch.tensor([fid in self._labelled for fid in ids], dtype=torch.uint8)
        has_label = has_label.to(comm_device(self.device))
        dist.all_reduce(has_label, op=dist.ReduceOp.MAX)
        self._labelled = {fid for fid, flag in zip(ids, has_label.tolist(), strict=True) if flag}
        for fid in ids:
            all_reduce_chunked(self._prob[fid], dist.ReduceOp.SUM, chunk_numel)
            all_reduce_chunked(self._weight[fid], dist.ReduceOp.SUM, chunk_numel)
            all_reduce_chunked(self._flags[fid], dist.ReduceOp.MAX, chunk_numel)

    def finish(self) -> None:
        """Turns the sums into weighted-mean probabilities in place and frees the weights (idempotent).

        A stored pixel no tile reached gets probability 0 and is not valid at the stored resolution.
        """
        if self._finished:
            return
        self._finished = True
        for fid, (hs, ws) in self._stored_shapes.items():
            prob, weight, flags, s = self._prob[fid], self._weight.pop(fid), self._flags[fid], self.stride
            valid = torch.empty((hs, ws), dtype=torch.bool, device=self.device)
            rows = max(1, _BLOCK_NUMEL // (ws * s * s))
            for r0 in range(0, hs, rows):
                block = slice(r0, min(hs, r0 + rows))
                wb = weight[block]
                covered = wb > 0
                # Uncovered pixels have a zero prob sum as well, so dividing by 1 there yields 0.
                prob[block].div_(torch.where(covered, wb, torch.ones_like(wb)))
                majority = _majority(flags[r0 * s : (r0 + rows) * s], VALID_BIT, s)
                valid[block] = covered & majority
            del weight
            self._valid[fid] = valid

    def bands(
        self, fragment_id: str, band_pixels: int = BAND_PIXELS, rank: int = 0, world: int = 1
    ) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Full-resolution ``(prob float32, label uint8, valid bool)`` row bands of the fragment's box, for scoring.

        Probabilities are upsampled from the stored map (`modules.evaluation.resample.prob_band`); ``label``, ``valid``
        are the full-resolution flags. Band ``k`` goes to rank ``k % world``, so ranks can share the counting.
        Calls :meth:`finish` first.
        """
        self._check_id(fragment_id)
        self.finish()
        y0, x0, y1, x1 = self._boxes[fragment_id]
        prob = self._prob[fragment_id].cpu().numpy()
        flags = self._flags[fragment_id]
        for k, (r0, r1) in enumerate(band_rows((y1 - y0, x1 - x0), band_pixels)):
            if k % world != rank:
                continue
            band = flags[r0:r1].cpu().numpy()
            label, valid = (band & LABEL_BIT) >> 1, (band & VALID_BIT) > 0
            yield prob_band(prob, (y1 - y0, x1 - x0), r0, r1, self.stride), label, valid

    def result(self, fragment_id: str, prob_dtype: type = np.float32, release: bool = False) -> dict[str, object]:
        """The maps of one fragment's box for callbacks, at ``1 / stride`` resolution (calls :meth:`finish`).

        Args:
            fragment_id: A fragment id given to the constructor.
            prob_dtype: numpy float dtype of ``prob`` (float16 halves what a caller keeps; scores come from
                :meth:`bands`, never from this copy).
            release: Free the fragment's buffers (flags first, then the float32 map once converted); later calls
                for this fragment fail until :meth:`reset`.

        Returns:
            ``{"prob": [h, w]`` weighted mean ``sum(w * p) / sum(w)``, 0 where no tile reached;
            ``"valid": bool [h, w]`` covered by a tile and inside the mask for at least half of the block;
            ``"label": uint8 [h, w]`` 0/1 ink in at least half of the block, only if labels were added;
            ``"box": (y0, x0, y1, x1)}`` the full-resolution pixels the maps cover.

        Raises:
            ValueError: Unknown fragment id.
        """
        self._check_id(fragment_id)
        self.finish()
        out: dict[str, object] = {"valid": self._valid[fragment_id].cpu().numpy()}
        if fragment_id in self._labelled:
            flags, s = self._flags[fragment_id], self.stride
            label = np.empty(self._stored_shapes[fragment_id], dtype=np.uint8)
            rows = max(1, _BLOCK_NUMEL // (label.shape[1] * s * s))
            for r0 in range(0, label.shape[0], rows):  # in blocks: no full-size temporaries
                label[r0 : r0 + rows] = _majority(flags[r0 * s : (r0 + rows) * s], LABEL_BIT, s).cpu().numpy()
            out["label"] = label
        prob = self._prob[fragment_id]
        if release:
            del self._flags[fragment_id], self._prob[fragment_id], self._valid[fragment_id]
        out["prob"] = prob.cpu().numpy().astype(prob_dtype, copy=False)
        out["box"] = self._boxes[fragment_id]
        return out
