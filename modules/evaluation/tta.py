"""Test-time augmentation: the mean probability of a model over flipped and rotated views of each tile.

Kept apart from stitching: TTA changes what one tile's prediction is, stitching only blends tiles into fragments.
Ink does not care which way up the papyrus lies (the competition's test fragments were rotated), so averaging over
the 8 dihedral views is a cheap ensemble at evaluation time.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

__all__ = ["TTA_TRANSFORMS", "tta_predict"]

TTA_TRANSFORMS = ("none", "flips", "rot90", "flips+rot90")


def _views(transforms: str) -> list[tuple[int, bool]]:
    """Views as (number of 90° rotations, flip along the last axis after rotating)."""
    if transforms == "none":
        return [(0, False)]
    if transforms == "flips":
        # identity, horizontal flip, vertical flip (= rotate 180° then flip horizontally)
        return [(0, False), (0, True), (2, True)]
    if transforms == "rot90":
        return [(k, False) for k in range(4)]
    if transforms == "flips+rot90":
        return [(k, f) for k in range(4) for f in (False, True)]
    raise ValueError(f"tta transforms {transforms!r} is not one of {TTA_TRANSFORMS}")


def tta_predict(
    fn: Callable[[torch.Tensor], torch.Tensor], image: torch.Tensor, transforms: str = "flips+rot90"
) -> torch.Tensor:
    """Test-time augmentation: mean probability over flipped/rotated views of the tiles.

    Each view is run through ``fn`` separately (memory of one plain forward pass), its logits turned
    into probabilities and mapped back to the original orientation before averaging.

    Args:
        fn: Model returning logits ``[B, 1, T, T]`` for an image ``[B, D, T, T]``.
        image: ``[B, D, T, T]`` batch of square tiles.
        transforms: ``"none"`` (1 view), ``"flips"`` (identity, horizontal, vertical: 3 views),
            ``"rot90"`` (4 rotations) or ``"flips+rot90"`` (all 8 dihedral views).

    Returns:
        float32 probabilities ``[B, 1, T, T]``.

    Raises:
        ValueError: Unknown ``transforms``, a non-square or non-4-D image, or ``fn`` returning the wrong shape.
    """
    views = _views(transforms)
    if image.ndim != 4 or image.shape[-1] != image.shape[-2]:
        raise ValueError(f"tta_predict needs a [B, D, T, T] image with square tiles, got {tuple(image.shape)}")
    expected = (image.shape[0], 1, image.shape[-2], image.shape[-1])
    total: torch.Tensor | None = None
    for k, flip in views:
        view = torch.rot90(image, k, dims=(-2, -1)) if k else image
        if flip:
            view = view.flip(-1)
        logits = fn(view)
        if tuple(logits.shape) != expected:
            raise ValueError(f"tta_predict: fn returned shape {tuple(logits.shape)}, expected {expected}")
        prob = torch.sigmoid(logits.float())
        if flip:
            prob = prob.flip(-1)
        if k:
            prob = torch.rot90(prob, -k, dims=(-2, -1))
        total = prob if total is None else total + prob
    assert total is not None
    return total / len(views)
