"""The baseline loop's data side: fragments read as the notebooks read them (top byte, HWC, slice range)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from benchmarks.baseline_data import load_fragment


def write_bright_ink_fragment(root: Path, seed: int, size: int = 128, depth: int = 40) -> np.ndarray:
    """Writes a fragment with bright ink discs in slices 28-32; returns its bool ink labels."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    ink = np.zeros((size, size), dtype=bool)
    for _ in range(4):
        cy, cx = rng.integers(16, size - 16, size=2)
        ink |= (yy - cy) ** 2 + (xx - cx) ** 2 <= int(rng.integers(6, 12)) ** 2
    volume = rng.normal(20000, 1500, size=(depth, size, size))
    volume[28:33][:, ink] += 25000
    slices = root / "surface_volume"
    slices.mkdir(parents=True)
    for z, image in enumerate(np.clip(volume, 0, 65535).astype(np.uint16)):
        tifffile.imwrite(slices / f"{z:02d}.tif", image)
    mask = np.zeros((size, size), dtype=np.uint8)
    mask[4:-4, 4:-4] = 255
    Image.fromarray(mask).save(root / "mask.png")
    Image.fromarray(ink.astype(np.uint8) * 255).save(root / "inklabels.png")
    return ink


def test_load_fragment_reads_top_byte_hwc(tmp_path: Path) -> None:
    write_bright_ink_fragment(tmp_path / "a", seed=0, size=64, depth=40)
    frag = load_fragment(tmp_path / "a", 22, 38)
    expected = tifffile.imread(tmp_path / "a" / "surface_volume" / "30.tif") >> 8
    assert frag.image.shape == (64, 64, 16) and frag.image.dtype == np.uint8
    np.testing.assert_array_equal(frag.image[..., 8], expected)
    with pytest.raises(ValueError):
        load_fragment(tmp_path / "a", 30, 41)
