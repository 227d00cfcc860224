"""utils/figures.py: CAM overlays, label outlines, depth-profile charts, downsampled prediction-beside-label images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from utils.figures import block_mean, cam_overlay, depth_profile_chart, outline, side_by_side
from utils.png import write_png


def test_overlay_helpers(tmp_path: Path) -> None:
    label = np.zeros((8, 8))
    label[2:6, 2:6] = 1
    ring = outline(label > 0)
    assert ring.sum() == 12 and not ring[3:5, 3:5].any()
    image = cam_overlay(np.random.default_rng(0).random((8, 8)), np.zeros((8, 8)), label)
    assert image.shape == (8, 8, 3) and (image[ring] == [0, 255, 0]).all()
    assert (image[~ring][:, 0] == image[~ring][:, 1]).all()  # zero CAM: plain grey outside the outline
    chart = depth_profile_chart([0.1, 0.6, 0.3], [0.2, 0.5, 0.3], first_slice=15, title="t")
    path = write_png(tmp_path / "a" / "chart.png", chart)
    with Image.open(path) as img:
        assert img.size == (360, 220)
    assert sorted(p.name for p in path.parent.iterdir()) == ["chart.png"]
    with pytest.raises(ValueError, match="equal length"):
        depth_profile_chart([0.5, 0.5], [1.0])
    with pytest.raises(ValueError, match="uint8"):
        write_png(tmp_path / "x.png", np.zeros((4, 4)))


def test_block_mean_matches_a_direct_mean_with_partial_edge_blocks() -> None:
    image = np.random.default_rng(0).random((11, 7))
    out = block_mean(image, 3, band_pixels=7)  # one block row per band
    assert out.shape == (4, 3) and out.dtype == np.float32
    for i in range(4):
        for j in range(3):
            assert out[i, j] == pytest.approx(image[3 * i : 3 * i + 3, 3 * j : 3 * j + 3].mean(), rel=1e-6)
    assert np.array_equal(block_mean(image, 1), image.astype(np.float32))
    with pytest.raises(ValueError, match="factor"):
        block_mean(image, 0)


def test_side_by_side_puts_prediction_left_of_label_within_max_size() -> None:
    prob = np.ones((300, 500), np.float32)
    label = np.zeros((300, 500), np.uint8)
    image = side_by_side(prob, label, max_size=64)
    assert image.dtype == np.uint8 and max(image.shape) <= 64 and max(image.shape) >= 56
    width = (image.shape[1] - 2) // 2
    assert (image[:, :width] == 255).all() and (image[:, width + 2 :] == 0).all()
    assert (image[:, width : width + 2] == 128).all()
    assert side_by_side(prob, None, max_size=64).shape == (38, 63)  # one panel, factor 8
    small = side_by_side(prob[:10, :20], label[:10, :20], max_size=1024)
    assert small.shape == (10, 42)  # never upsampled
    with pytest.raises(ValueError, match="label shape"):
        side_by_side(prob, label[:10], max_size=64)
