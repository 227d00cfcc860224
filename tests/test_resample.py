"""modules/evaluation/resample.py: stitched maps upsampled to full resolution in bands, independent of the band size."""

from __future__ import annotations

import numpy as np

from modules.evaluation.resample import full_resolution_bands


def test_bands_do_not_depend_on_the_band_size() -> None:
    rng = np.random.default_rng(1)
    prob = rng.random((6, 5), dtype=np.float32)
    valid = rng.random((6, 5)) < 0.5
    parts = {b: list(full_resolution_bands(prob, valid, (12, 9), band_pixels=b)) for b in (9, 20, 1000)}
    whole = [np.concatenate([p for p, _ in parts[b]]) for b in parts]
    flags = [np.concatenate([v for _, v in parts[b]]) for b in parts]
    assert len(parts[9]) == 12 and len(parts[1000]) == 1
    assert all(np.allclose(w, whole[0]) for w in whole) and all(np.array_equal(f, flags[0]) for f in flags)
    assert np.array_equal(flags[0], np.repeat(np.repeat(valid, 2, 0), 2, 1)[:12, :9])
    # At full resolution the maps come back unchanged.
    same = list(full_resolution_bands(prob, valid, (6, 5), band_pixels=10))
    assert np.array_equal(np.concatenate([p for p, _ in same]), prob)
