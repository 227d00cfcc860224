"""Blending overlapping tile predictions back into whole-fragment probability maps (TTA lives in `modules.tta`).

The metric of the task is F0.5 over the whole fragment, so validation, test and prediction tiles are
stitched into one map per fragment before anything is scored or written. Each tile's probabilities
are multiplied by a window that fades towards the tile border (tile borders see less context and
predict worse), summed into the fragment map, and divided by the summed window weights, so that
every covered pixel gets a proper weighted mean whatever the overlap.

Maps are kept at ``1 / stride`` of full resolution to bound memory. Per fragment of ``h × w``
stored pixels (``h = ceil(H / stride)``) the stitcher holds a float32 probability sum, a float32
weight sum, a uint8 valid flag and, once labels arrive, a uint8 label: 10 bytes a pixel. For a real
fragment of 14830 × 9506 pixels that is:

- stride 1: 14830 × 9506 stored, 2 × 563.9 MB + 2 × 141.0 MB ≈ 1.41 GB
- stride 2: 7415 × 4753 stored, 2 × 141.0 MB + 2 × 35.2 MB ≈ 352 MB
- stride 4: 3708 × 2377 stored, 2 × 35.3 MB + 2 × 8.8 MB ≈ 88 MB

``result`` adds a float32 probability and a bool valid map (plus a copy of the label) in host
memory, i.e. another 5–6 bytes a pixel, built in row blocks so that no second full-size map is
needed on the accumulator's device. ``reduce`` all-reduces in chunks for the same reason.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

from utils.checks import check_int

__all__ = ["FragmentStitcher", "window_weights"]

WINDOW_KINDS = ("hann", "gaussian", "uniform")

# 16 Mi elements: 64 MB of float32 per all_reduce call, small next to the maps, large enough to keep
# the number of collective calls (and their latency) low.
DEFAULT_REDUCE_CHUNK_NUMEL = 1 << 24
# Rows per block when turning the accumulators into numpy maps (bounds device-side temporaries).
_RESULT_BLOCK_NUMEL = 1 << 24


def _check_tile_and_stride(tile_size: int, stride: int) -> None:
    check_int("tile_size", tile_size, minimum=1)
    check_int("stride", stride, minimum=1)
    if tile_size % stride != 0:
        raise ValueError(f"stride={stride} must divide tile_size={tile_size}")


def window_weights(tile_size: int, kind: str = "hann", stride: int = 1) -> torch.Tensor:
    """Blending weights for one tile, strictly positive everywhere.

    Strict positivity matters: a pixel that only one tile covers (a fragment corner) must still get a
    prediction, so no window may reach zero at the border.

    Args:
        tile_size: Tile side in full-resolution pixels.
        kind: ``"hann"`` (``sin²`` taper from an (t+2)-point Hann window with its zero ends dropped),
            ``"gaussian"`` (sigma = t / 8, as in nnU-Net's sliding-window inference; about 3e-4 at the
            border of each axis) or ``"uniform"`` (all ones).
        stride: Downsampling factor of the stitched map; must divide ``tile_size``.

    Returns:
        float32 tensor of shape ``[t, t]`` with ``t = tile_size // stride`` and maximum about 1.

    Raises:
        ValueError: Unknown ``kind``, non-positive sizes or a stride that does not divide the tile.
    """
    _check_tile_and_stride(tile_size, stride)
    t = tile_size // stride
    if kind == "hann":
        line = torch.hann_window(t + 2, periodic=False, dtype=torch.float64)[1:-1]
    elif kind == "gaussian":
        sigma = t / 8.0
        pos = torch.arange(t, dtype=torch.float64) - (t - 1) / 2.0
        line = torch.exp(-0.5 * (pos / sigma) ** 2)
    elif kind == "uniform":
        line = torch.ones(t, dtype=torch.float64)
    else:
        raise ValueError(f"window kind {kind!r} is not one of {WINDOW_KINDS}")
    weights = torch.outer(line, line)
    weights = weights / weights.max()
    return weights.to(torch.float32)


def _pool(x: torch.Tensor, stride: int) -> torch.Tensor:
    return x if stride == 1 else F.avg_pool2d(x, stride)


class FragmentStitcher:
    """Accumulates overlapping tile probabilities into whole-fragment maps at ``1 / stride`` resolution.

    Stored maps have ``ceil(H / stride) × ceil(W / stride)`` pixels; stored pixel ``(i, j)`` stands for
    the full-resolution block starting at ``(i * stride, j * stride)``. Probabilities are
    average-pooled by ``stride`` before blending; ``valid`` and ``label`` are pooled by majority
    (a stored pixel is valid / ink when at least half its block is).

    Tile corners that are not multiples of ``stride`` are floored to the stride grid, i.e. the pooled
    tile is placed up to ``stride - 1`` full-resolution pixels up/left of where it belongs. Data
    modules should use tile steps that are multiples of the stride to avoid this shift.

    Tiles may overhang the bottom/right edge of a fragment (data modules pad fragments smaller than a
    tile); the overhang is dropped. A tile corner that is negative or at/after the fragment's far edge
    is an error.

    Typical use on every rank: ``add`` each eval batch, ``reduce`` once at epoch end, then ``result``.

    Args:
        shapes: ``{fragment_id: (H, W)}`` in full-resolution pixels; must be identical on every rank.
        tile_size: Tile side ``T`` in full-resolution pixels.
        window: Blending window kind, see :func:`window_weights`.
        stride: Downsampling factor of the stored maps (1, 2, 4, …), must divide ``tile_size``.
        device: Where the accumulators live (CPU keeps large maps off the accelerator).

    Raises:
        ValueError: Bad shapes, tile size, stride or window kind.
    """

    def __init__(
        self,
        shapes: dict[str, tuple[int, int]],
        tile_size: int,
        *,
        window: str = "hann",
        stride: int = 1,
        device: torch.device | str = "cpu",
    ) -> None:
        _check_tile_and_stride(tile_size, stride)
        self.tile_size = tile_size
        self.stride = stride
        self.device = torch.device(device)
        self.weights = window_weights(tile_size, window, stride).to(self.device)
        self.window = window
        self._shapes: dict[str, tuple[int, int]] = {}
        self._stored_shapes: dict[str, tuple[int, int]] = {}
        for fid, shape in shapes.items():
            if not isinstance(fid, str):
                raise ValueError(f"fragment ids must be str, got {fid!r}")
            if (
                len(tuple(shape)) != 2
                or not all(isinstance(s, int | np.integer) and not isinstance(s, bool) for s in shape)
                or min(shape) <= 0
            ):
                raise ValueError(f"shape of fragment {fid!r} must be two positive ints (H, W), got {shape!r}")
            full = (int(shape[0]), int(shape[1]))
            self._shapes[fid] = full
            self._stored_shapes[fid] = (-(-full[0] // stride), -(-full[1] // stride))
        self._prob_sum: dict[str, torch.Tensor] = {}
        self._weight_sum: dict[str, torch.Tensor] = {}
        self._valid: dict[str, torch.Tensor] = {}
        self._label: dict[str, torch.Tensor] = {}
        self._reduced = False
        self.reset()

    @property
    def fragment_ids(self) -> list[str]:
        """Fragment ids in the order given to the constructor."""
        return list(self._shapes)

    def stored_shape(self, fragment_id: str) -> tuple[int, int]:
        """Shape ``(ceil(H / stride), ceil(W / stride))`` of the maps that :meth:`result` returns."""
        self._check_id(fragment_id)
        return self._stored_shapes[fragment_id]

    def reset(self) -> None:
        """Zeroes all accumulators (allocating them on first call) so the stitcher can be reused."""
        for fid, shape in self._stored_shapes.items():
            if fid in self._prob_sum:
                self._prob_sum[fid].zero_()
                self._weight_sum[fid].zero_()
                self._valid[fid].zero_()
            else:
                self._prob_sum[fid] = torch.zeros(shape, dtype=torch.float32, device=self.device)
                self._weight_sum[fid] = torch.zeros(shape, dtype=torch.float32, device=self.device)
                self._valid[fid] = torch.zeros(shape, dtype=torch.uint8, device=self.device)
        self._label.clear()
        self._reduced = False

    def _check_id(self, fragment_id: str) -> None:
        if fragment_id not in self._shapes:
            raise ValueError(f"unknown fragment id {fragment_id!r}; the stitcher knows {sorted(self._shapes)}")

    def _check_tile_tensor(self, name: str, x: torch.Tensor, batch: int) -> None:
        expected = (batch, 1, self.tile_size, self.tile_size)
        if not isinstance(x, torch.Tensor) or tuple(x.shape) != expected:
            got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"{name} must be a tensor of shape {list(expected)} (B, 1, T, T), got {got}")

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
            yx: ``[B, 2]`` top-left corner of each tile in full-resolution pixels (floored to the stride
                grid, see the class docstring).
            probs: ``[B, 1, T, T]`` probabilities in ``[0, 1]`` (not logits).
            valid: ``[B, 1, T, T]`` 1 where the pixel is inside the papyrus mask and the fragment.
            label: Optional ``[B, 1, T, T]`` ink labels 0/1.

        Raises:
            ValueError: Mismatched shapes, an unknown fragment id or a tile outside its fragment.
            RuntimeError: Called after :meth:`reduce` (sums would be counted twice by a second reduce).
        """
        if self._reduced:
            raise RuntimeError("FragmentStitcher.add called after reduce(); call reset() first")
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
        for fid, (y, x) in zip(fragment_ids, corners, strict=True):
            self._check_id(fid)
            h, w = self._shapes[fid]
            if not (0 <= y < h and 0 <= x < w):
                raise ValueError(
                    f"tile at yx=({y}, {x}) lies outside fragment {fid!r} of shape ({h}, {w}): "
                    "the corner must be inside the fragment"
                )
        s = self.stride
        p = _pool(probs.detach().to(self.device, torch.float32), s)
        v = (_pool(valid.detach().to(self.device, torch.float32), s) >= 0.5).to(torch.uint8)
        lab = None
        if label is not None:
            lab = (_pool(label.detach().to(self.device, torch.float32), s) >= 0.5).to(torch.uint8)
        t = self.tile_size // s
        for i, (fid, (y, x)) in enumerate(zip(fragment_ids, corners, strict=True)):
            hs, ws = self._stored_shapes[fid]
            y0, x0 = y // s, x // s
            dy, dx = min(t, hs - y0), min(t, ws - x0)
            win = self.weights[:dy, :dx]
            region = (slice(y0, y0 + dy), slice(x0, x0 + dx))
            self._prob_sum[fid][region] += win * p[i, 0, :dy, :dx]
            self._weight_sum[fid][region] += win
            self._valid[fid][region] |= v[i, 0, :dy, :dx]
            if lab is not None:
                if fid not in self._label:
                    self._label[fid] = torch.zeros((hs, ws), dtype=torch.uint8, device=self.device)
                self._label[fid][region] |= lab[i, 0, :dy, :dx]

    def reduce(self, chunk_numel: int = DEFAULT_REDUCE_CHUNK_NUMEL) -> None:
        """Combines the accumulators of all DDP ranks; a no-op without an initialised process group.

        Sums and weights are all-reduced with SUM, valid and label flags with MAX, in chunks of
        ``chunk_numel`` elements so that no second full-size copy of a map is needed (CPU
        accumulators under an NCCL-only group travel through the current CUDA device chunk by chunk).
        Every rank must call it (it is a collective), and every rank ends with the same maps, whichever
        rank saw which tile. Calling it again without new tiles does nothing.

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
        comm_device = self._comm_device()
        # A rank may have seen labels for a fragment that another rank got no tiles of: agree first.
        has_label = torch.tensor([fid in self._label for fid in ids], dtype=torch.uint8, device=comm_device)
        dist.all_reduce(has_label, op=dist.ReduceOp.MAX)
        for fid, flag in zip(ids, has_label.tolist(), strict=True):
            if flag and fid not in self._label:
                self._label[fid] = torch.zeros(self._stored_shapes[fid], dtype=torch.uint8, device=self.device)
        for fid in ids:
            _all_reduce_chunked(self._prob_sum[fid], dist.ReduceOp.SUM, chunk_numel, comm_device)
            _all_reduce_chunked(self._weight_sum[fid], dist.ReduceOp.SUM, chunk_numel, comm_device)
            _all_reduce_chunked(self._valid[fid], dist.ReduceOp.MAX, chunk_numel, comm_device)
            if fid in self._label:
                _all_reduce_chunked(self._label[fid], dist.ReduceOp.MAX, chunk_numel, comm_device)

    def _comm_device(self) -> torch.device:
        backend = str(dist.get_backend()).lower()
        if self.device.type == "cpu" and "nccl" in backend and "gloo" not in backend:
            return torch.device("cuda", torch.cuda.current_device())
        return self.device

    def result(self, fragment_id: str) -> dict[str, np.ndarray]:
        """The stitched maps of one fragment at ``1 / stride`` resolution.

        Args:
            fragment_id: A fragment id given to the constructor.

        Returns:
            ``{"prob": float32 [h, w]`` weighted mean ``sum(w * p) / sum(w)``, 0 where no tile reached;
            ``"valid": bool [h, w]`` covered by at least one tile and inside the mask;
            ``"label": uint8 [h, w]}`` 0/1 ink, present only if labels were added for this fragment.

        Raises:
            ValueError: Unknown fragment id.
        """
        self._check_id(fragment_id)
        h, w = self._stored_shapes[fragment_id]
        prob = np.empty((h, w), dtype=np.float32)
        valid = np.empty((h, w), dtype=bool)
        rows = max(1, _RESULT_BLOCK_NUMEL // w)
        ps, ws, vs = self._prob_sum[fragment_id], self._weight_sum[fragment_id], self._valid[fragment_id]
        for r0 in range(0, h, rows):
            block = slice(r0, min(h, r0 + rows))
            wb = ws[block]
            covered = wb > 0
            # Uncovered pixels have a zero prob sum as well, so dividing by 1 there yields 0.
            prob[block] = (ps[block] / torch.where(covered, wb, torch.ones_like(wb))).cpu().numpy()
            valid[block] = (covered & (vs[block] > 0)).cpu().numpy()
        out = {"prob": prob, "valid": valid}
        if fragment_id in self._label:
            out["label"] = self._label[fragment_id].cpu().numpy().copy()
        return out


def _all_reduce_chunked(tensor: torch.Tensor, op: dist.ReduceOp, chunk_numel: int, comm_device: torch.device) -> None:
    flat = tensor.view(-1)  # accumulators are contiguous, so chunks are contiguous views
    move = comm_device != tensor.device
    for start in range(0, flat.numel(), chunk_numel):
        part = flat[start : start + chunk_numel]
        if move:
            buf = part.to(comm_device)
            dist.all_reduce(buf, op=op)
            part.copy_(buf)
        else:
            dist.all_reduce(part, op=op)
