"""Tests for test-time augmentation over flipped and rotated views (modules/evaluation/tta.py)."""

from __future__ import annotations

import pytest
import torch

from modules.evaluation.tta import tta_predict


@pytest.mark.parametrize("transforms", ["none", "flips", "rot90", "flips+rot90"])
def test_tta_with_equivariant_model_equals_plain_prediction(transforms: str) -> None:
    image = torch.randn(2, 3, 16, 16)

    def fn(x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=1, keepdim=True)

    out = tta_predict(fn, image, transforms)
    assert out.shape == (2, 1, 16, 16)
    torch.testing.assert_close(out, torch.sigmoid(fn(image)), atol=1e-6, rtol=0)


@pytest.mark.parametrize("transforms", ["flips", "rot90", "flips+rot90"])
def test_tta_with_non_equivariant_model_differs(transforms: str) -> None:
    image = torch.randn(2, 3, 16, 16)
    ramp = torch.linspace(-3, 3, 16).expand(16, 16)

    def fn(x: torch.Tensor) -> torch.Tensor:
        # Adds a fixed left-to-right ramp: not invariant under flips or rotations.
        return x.mean(dim=1, keepdim=True) + ramp

    plain = torch.sigmoid(fn(image))
    out = tta_predict(fn, image, transforms)
    assert out.shape == plain.shape
    assert (out - plain).abs().max() > 0.1


def test_tta_errors() -> None:
    image = torch.randn(1, 2, 8, 8)
    with pytest.raises(ValueError, match="'d4'"):
        tta_predict(lambda x: x[:, :1], image, "d4")
    with pytest.raises(ValueError, match="square"):
        tta_predict(lambda x: x[:, :1], torch.randn(1, 2, 8, 6), "none")
    with pytest.raises(ValueError, match="fn returned shape"):
        tta_predict(lambda x: x, image, "none")
