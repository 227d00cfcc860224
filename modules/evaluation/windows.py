"""Blending windows: how much each pixel of a tile counts when overlapping tiles are averaged into a fragment map.

Tile borders see less context and predict worse, so a window that fades towards the border gives the centre of
each tile more say. Kept apart from `modules.evaluation.stitching` so that the choice of window is one small file.
"""

from __future__ import annotations

import torch

from utils.checks import check_int

__all__ = ["WINDOW_KINDS", "check_tile_and_stride", "window_weights"]

WINDOW_KINDS = ("hann", "gaussian", "uniform")


def check_tile_and_stride(tile_size: int, stride: int) -> None:
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
    check_tile_and_stride(tile_size, stride)
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
