"""utils/figures.py: CAM overlays, label outlines and depth-profile charts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from utils.figures import cam_overlay, depth_profile_chart, outline
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
