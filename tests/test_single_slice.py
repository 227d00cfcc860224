"""Tests of the single-slice bound: exact sweeps in both polarities, float slices, and named bad inputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from datamodules.synthetic.single_slice import best_single_slice_f05


def test_best_single_slice_f05_finds_a_perfect_slice_in_either_polarity(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    labels = np.zeros((32, 40), dtype=np.uint8)
    labels[8:20, 5:30] = 255
    (tmp_path / "surface_volume").mkdir()
    slices = [rng.integers(0, 60000, labels.shape), 1000 + (labels > 0) * 500, 5000 - (labels > 0) * 700]
    for index, image in enumerate(slices):
        tifffile.imwrite(tmp_path / "surface_volume" / f"{index:02d}.tif", image.astype(np.uint16))
    float_slice = (labels > 0) * 0.25 + rng.uniform(0, 0.2, labels.shape)  # 4096 bins separate 0.2 from 0.25
    tifffile.imwrite(tmp_path / "surface_volume" / "03.tif", float_slice.astype(np.float32))
    Image.fromarray(labels).save(tmp_path / "inklabels.png")
    assert best_single_slice_f05(tmp_path, z_range=(1, 2)) == pytest.approx(1.0)  # ink brighter
    assert best_single_slice_f05(tmp_path, z_range=(2, 3)) == pytest.approx(1.0)  # ink darker
    assert best_single_slice_f05(tmp_path, z_range=(0, 1)) < 0.6
    assert best_single_slice_f05(tmp_path, z_range=(3, 4)) == pytest.approx(1.0)
    assert best_single_slice_f05(tmp_path) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="z_range"):
        best_single_slice_f05(tmp_path, z_range=(2, 5))
    Image.fromarray(labels[:16]).save(tmp_path / "mask.png")
    with pytest.raises(ValueError, match="mask.png"):
        best_single_slice_f05(tmp_path)
    (tmp_path / "inklabels.png").unlink()
    with pytest.raises(FileNotFoundError, match="inklabels.png"):
        best_single_slice_f05(tmp_path)
