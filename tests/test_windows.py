"""Blending windows (modules/evaluation/windows.py): strictly positive, symmetric, fading towards the border."""

from __future__ import annotations

import pytest
import torch

from modules.evaluation.windows import WINDOW_KINDS, window_weights

TILE = 32


@pytest.mark.parametrize("kind", WINDOW_KINDS)
def test_window_weights_positive_and_shaped(kind: str) -> None:
    for stride in (1, 2, 4):
        w = window_weights(TILE, kind, stride)
        assert w.shape == (TILE // stride, TILE // stride)
        assert w.dtype == torch.float32
        assert bool((w > 0).all()), "border pixels must keep a nonzero weight"
        assert float(w.max()) == pytest.approx(1.0)
        assert torch.allclose(w, w.T) and torch.allclose(w, w.flip(0))
    if kind != "uniform":
        w = window_weights(TILE, kind)
        assert float(w[0, 0]) < float(w[TILE // 2, TILE // 2])


def test_window_weights_errors() -> None:
    with pytest.raises(ValueError, match="'cosine'"):
        window_weights(TILE, "cosine")
    with pytest.raises(ValueError, match="stride=3 must divide tile_size=32"):
        window_weights(TILE, "hann", 3)
    with pytest.raises(ValueError, match="tile_size"):
        window_weights(0)
