"""The held-out synthetic family (benchmarks/heldout_family.py): layout, determinism, ink amount and faintness."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from benchmarks import heldout_family
from benchmarks.heldout_family import make_heldout_fragment, make_heldout_set

SIZE = 128
DEPTH = 65


def _read(root: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Volume [Z, H, W], mask and labels (bool) of a written fragment."""
    volume = np.stack([tifffile.imread(root / "surface_volume" / f"{z:02d}.tif") for z in range(DEPTH)])
    mask = np.array(Image.open(root / "mask.png")) > 0
    labels = np.array(Image.open(root / "inklabels.png")) > 0
    return volume, mask, labels


def _f05(pred: np.ndarray, truth: np.ndarray) -> float:
    """F0.5 of boolean predictions against boolean truth."""
    tp = float(np.sum(pred & truth))
    fp = float(np.sum(pred & ~truth))
    fn = float(np.sum(~pred & truth))
    return 1.25 * tp / (1.25 * tp + 0.25 * fn + fp) if tp else 0.0


def _best_threshold_f05(values: np.ndarray, truth: np.ndarray) -> float:
    """Best F0.5 over global thresholds at the 5th…95th percentiles, ink brighter or darker."""
    best = 0.0
    for threshold in np.percentile(values, np.linspace(5, 95, 19)):
        best = max(best, _f05(values > threshold, truth), _f05(values < threshold, truth))
    return best


@pytest.fixture(scope="module")
def fragment(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_heldout_fragment(tmp_path_factory.mktemp("heldout") / "f", height=SIZE, width=SIZE, seed=3)


def test_layout_shapes_and_dtypes(fragment: Path) -> None:
    names = sorted(p.name for p in (fragment / "surface_volume").iterdir())
    assert names == [f"{z:02d}.tif" for z in range(DEPTH)]
    assert sorted(p.name for p in fragment.iterdir()) == ["inklabels.png", "mask.png", "surface_volume"]
    with tifffile.TiffFile(fragment / "surface_volume" / "00.tif") as tif:
        page = tif.pages[0]
        assert page.shape == (SIZE, SIZE) and page.dtype == np.uint16 and page.compression == 1
    for name in ("mask.png", "inklabels.png"):
        image = Image.open(fragment / name)
        assert image.mode == "L" and image.size == (SIZE, SIZE)
        assert set(np.unique(np.array(image))) <= {0, 255}

    volume, mask, labels = _read(fragment)
    assert volume.dtype == np.uint16 and volume.shape == (DEPTH, SIZE, SIZE)
    assert 0.6 < mask.mean() < 0.95
    assert not (labels & ~mask).any()
    # A papyrus sheet near slice 30: bright mid-depth profile inside the mask, only air outside it.
    profile = volume[:, mask].mean(axis=1)
    assert 22 <= int(np.argmax(profile)) <= 40 and profile.max() > 20000
    assert abs(float(volume[:, ~mask].mean()) - 9000) < 1000


def test_ink_fraction_in_range(tmp_path: Path) -> None:
    for seed in (0, 1, 2):
        _, mask, labels = _read(make_heldout_fragment(tmp_path / str(seed), height=SIZE, width=SIZE, seed=seed))
        assert 0.12 < labels[mask].mean() < 0.38, seed


def test_deterministic_and_seed_dependent(tmp_path: Path, fragment: Path) -> None:
    again = _read(make_heldout_fragment(tmp_path / "again", height=SIZE, width=SIZE, seed=3))
    for a, b in zip(_read(fragment), again):
        np.testing.assert_array_equal(a, b)
    other = _read(make_heldout_fragment(tmp_path / "other", height=SIZE, width=SIZE, seed=4))
    for a, b in zip(_read(fragment), other):
        assert not np.array_equal(a, b)


def test_set_has_distinct_fragments(tmp_path: Path) -> None:
    paths = make_heldout_set(tmp_path, ids=("a", "b"), size=64, seed=7)
    assert paths == [tmp_path / "a", tmp_path / "b"]
    labels = [np.array(Image.open(p / "inklabels.png")) for p in paths]
    assert labels[0].shape == (64, 64) and not np.array_equal(labels[0], labels[1])


def test_noise_sigma_matches_definition() -> None:
    """The documented sigma is the std of the total noise inside the sheet (what the ink amplitude is scaled by)."""
    fields = heldout_family._build(SIZE, SIZE, DEPTH, 5, 0.7)
    rng = np.random.default_rng(0)
    residuals = []
    for z in range(*fields.z_range):
        clean = heldout_family._clean_slice(fields, z)
        below = z - fields.surface
        inside = fields.mask & (below > 1) & (below < fields.thickness - 1)
        residuals.append(heldout_family._noise_slice(fields, z, clean, rng)[inside])
    assert np.std(np.concatenate(residuals)) == pytest.approx(fields.noise_sigma, rel=0.1)
    assert fields.ink_amplitude == pytest.approx(0.7 * fields.noise_sigma)


def test_ink_is_faint_to_a_single_slice_threshold(tmp_path: Path) -> None:
    """No single slice separates ink with one global threshold at ink_to_noise 0.7 (either polarity)."""
    size = 192
    root = make_heldout_fragment(tmp_path / "f", height=size, width=size, seed=1, ink_to_noise=0.7)
    volume, mask, labels = _read(root)
    truth = labels[mask]
    best = max(_best_threshold_f05(volume[z][mask].astype(np.float32), truth) for z in range(15, 50))
    all_ink = _f05(np.ones_like(truth), truth)
    assert best < 0.45
    assert best < all_ink + 0.12  # barely better than calling everything ink


def test_ink_signal_exists_and_scales(tmp_path: Path) -> None:
    """Read along the true surface, strong ink separates far better than the default faint ink."""

    def along_surface_f05(ink_to_noise: float) -> float:
        root = make_heldout_fragment(
            tmp_path / str(ink_to_noise), height=SIZE, width=SIZE, seed=2, ink_to_noise=ink_to_noise
        )
        volume, mask, labels = _read(root)
        surface = heldout_family._build(SIZE, SIZE, DEPTH, 2, ink_to_noise).surface + 0.75
        z0 = np.clip(np.floor(surface).astype(int), 0, DEPTH - 2)
        w = surface - z0
        rows, cols = np.indices(surface.shape)
        layer = (1 - w) * volume[z0, rows, cols] + w * volume[z0 + 1, rows, cols]
        return _best_threshold_f05(layer[mask], labels[mask])

    faint, strong = along_surface_f05(0.7), along_surface_f05(4.0)
    assert faint < 0.5
    assert strong > faint + 0.2
