"""Per-fragment intensity normalisation: robust percentiles inside the mask, cached, recomputed on change."""

from __future__ import annotations

import os

import numpy as np
import pytest

from datamodules.augment.transforms import normalise
from datamodules.reading.fragment import Fragment
from datamodules.reading.intensity import check_normalization, intensity_range
from tests.conftest import write_fragment


def _fragment(tmp_path, offset: int = 0, gain: float = 1.0, name: str = "frag"):
    rng = np.random.default_rng(0)
    volume = (rng.normal(20000, 2000, size=(8, 64, 64)) * gain + offset).clip(0, 65535).astype(np.uint16)
    mask = np.zeros((64, 64), dtype=bool)
    mask[8:56, 8:56] = True
    volume[:, ~mask] = 60000  # bright outside the papyrus: must not count
    return write_fragment(tmp_path / name, volume, mask=mask), volume, mask


def test_percentiles_are_taken_inside_the_mask_and_window(tmp_path):
    folder, volume, mask = _fragment(tmp_path)
    lo, hi = intensity_range(Fragment(folder, z_start=0, z_end=8), 2, 6, 1.0, 99.0)
    inside = volume[2:6][:, mask]
    assert lo == pytest.approx(np.percentile(inside, 1.0), rel=0.01)
    assert hi == pytest.approx(np.percentile(inside, 99.0), rel=0.01)
    assert hi < 60000


def test_brightness_and_contrast_differences_are_removed(tmp_path):
    a, _, _ = _fragment(tmp_path, name="a")
    b, _, _ = _fragment(tmp_path, offset=5000, gain=1.5, name="b")
    fa, fb = Fragment(a, z_start=0, z_end=8), Fragment(b, z_start=0, z_end=8)
    na = normalise(fa.read(0, 8, 20, 20, 16, 16), intensity_range(fa, 0, 8))
    nb = normalise(fb.read(0, 8, 20, 20, 16, 16), intensity_range(fb, 0, 8))
    raw_gap = abs(normalise(fa.read(0, 8, 20, 20, 16, 16)).mean() - normalise(fb.read(0, 8, 20, 20, 16, 16)).mean())
    assert abs(na.mean() - nb.mean()) < 0.02 < raw_gap
    assert na.min() >= 0.0 and na.max() <= 1.0


def test_cached_once_and_recomputed_when_a_slice_changes(tmp_path, monkeypatch):
    folder, volume, _ = _fragment(tmp_path)
    fragment = Fragment(folder, z_start=0, z_end=8)
    first = intensity_range(fragment, 0, 8)
    cached = list(fragment.cache_dir.glob("intensity.*.json"))
    assert len(cached) == 1

    import datamodules.reading.intensity as intensity

    monkeypatch.setattr(intensity, "_compute", lambda *a, **k: pytest.fail("recomputed a cached range"))
    assert intensity_range(fragment, 0, 8) == first
    monkeypatch.undo()

    import tifffile

    tifffile.imwrite(folder / "surface_volume" / "03.tif", (volume[3] // 2).astype(np.uint16))
    os.utime(folder / "surface_volume" / "03.tif", ns=(1, 1))
    changed = intensity_range(Fragment(folder, z_start=0, z_end=8), 0, 8)
    assert changed != first


def test_constant_volume_and_bad_settings_are_named(tmp_path):
    volume = np.full((4, 32, 32), 7, dtype=np.uint16)
    folder = write_fragment(tmp_path / "flat", volume)
    with pytest.raises(ValueError, match="'flat'.*constant"):
        intensity_range(Fragment(folder, z_start=0, z_end=4), 0, 4)
    with pytest.raises(ValueError, match="normalization must be one of"):
        check_normalization("zscore", 1, 99)
    with pytest.raises(ValueError, match="percentiles"):
        check_normalization("fragment", 99, 1)
