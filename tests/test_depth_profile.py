"""Depth profile, surface detection and layer windows (datamodules/reading/depth_profile.py) on tiny fragments."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from datamodules.reading.depth_profile import DepthProfile, depth_profile, detect_surface, smooth
from datamodules.reading.fragment import Fragment
from datamodules.synthetic import make_fragment, slice_name
from datamodules.synthetic.generator import surface_depth
from tests.conftest import write_fragment
from tests.synthetic_files import slice_paths

SIZE = 64


def reversed_copy(source: Path, target: Path) -> Path:
    """Copies a fragment folder with slice file ``i`` renamed ``layers - 1 - i`` (the depth order reversed)."""
    files = slice_paths(source)
    (target / "surface_volume").mkdir(parents=True)
    for i, path in enumerate(files):
        shutil.copyfile(path, target / "surface_volume" / slice_name(len(files) - 1 - i, len(files)))
    for name in ("mask.png", "inklabels.png"):
        if (source / name).exists():
            shutil.copyfile(source / name, target / name)
    return target


def estimate(folder: Path):
    return detect_surface(depth_profile(Fragment(folder, z_start=0, z_end=1)))


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The default synthetic fragment (65 layers, surface near 30) at 64 x 64 and its depth-reversed copy."""
    root = tmp_path_factory.mktemp("pair")
    original = make_fragment(root / "frag", SIZE, SIZE, seed=0)
    return original, reversed_copy(original, root / "frag_rev")


def test_a_reversed_copy_gives_the_opposite_flag_and_mirrored_surface_and_windows(pair):
    normal, mirrored = estimate(pair[0]), estimate(pair[1])
    assert normal.reversed is False and mirrored.reversed is True
    assert normal.confident and mirrored.confident
    assert mirrored.surface == 64 - normal.surface  # exact, not approximately
    assert (mirrored.rising, mirrored.falling) == (64 - normal.falling, 64 - normal.rising)
    for depth in (1, 7, 30, 64, 65):
        a, b = normal.window(depth)
        assert mirrored.window(depth) == (65 - b, 65 - a)
        assert mirrored.normal_window(depth) == normal.normal_window(depth) == (a, b)


def test_the_default_fragment_gives_the_default_window(pair):
    assert estimate(pair[0]).window(30) == (15, 45)
    assert estimate(pair[1]).window_in_order(30, reverse_depth=True) == (15, 45)


def test_the_profile_is_in_stored_order_whatever_reverse_depth_says(pair):
    plain = depth_profile(Fragment(pair[1], z_start=0, z_end=1))
    flipped = depth_profile(Fragment(pair[1], z_start=0, z_end=1, reverse_depth=True))
    np.testing.assert_array_equal(plain.values, flipped.values)
    np.testing.assert_array_equal(plain.values, depth_profile(Fragment(pair[0], z_start=0, z_end=1)).values[::-1])


@pytest.mark.parametrize(
    ("layers", "surface_z", "reverse"),
    [(21, None, False), (21, 10.0, True), (65, 33.0, False), (65, None, True), (109, None, False), (109, 56.0, True)],
)
def test_the_surface_is_found_within_a_layer_and_a_half(tmp_path, layers, surface_z, reverse):
    folder = make_fragment(tmp_path / "f", SIZE, SIZE, depth=layers, seed=1, surface_z=surface_z, reverse_depth=reverse)
    found = estimate(folder)
    mask = np.asarray(Fragment(folder, z_start=0, z_end=1).mask)
    truth = float(surface_depth(SIZE, SIZE, depth=layers, seed=1, surface_z=surface_z)[mask].mean())
    assert found.reversed is reverse
    assert found.normal_surface == pytest.approx(truth, abs=1.5)
    assert found.surface == pytest.approx(layers - 1 - truth if reverse else truth, abs=1.5)
    if surface_z is not None:
        assert found.normal_surface == pytest.approx(surface_z, abs=2.5)  # the wobble's mean adds up to a layer


def test_the_depth_profile_samples_a_strided_grid_inside_the_mask(tmp_path):
    volume = np.zeros((3, 40, 40), dtype=np.uint8)
    volume[1, :20] = 200  # inside the mask only in layer 1
    volume[2, 20:] = 100  # outside the mask
    mask = np.zeros((40, 40), dtype=bool)
    mask[:20] = True
    folder = write_fragment(tmp_path / "grid", volume, mask=mask)
    profile = depth_profile(Fragment(folder, z_start=0, z_end=1), samples_per_layer=100)
    assert profile.step == 4 and profile.samples == 5 * 10
    np.testing.assert_array_equal(profile.values, [0.0, 200.0, 0.0])
    assert profile.dtype == "uint8" and profile.full_range == 255.0


def test_smoothing_and_detection_are_exactly_mirror_equivariant():
    rng = np.random.default_rng(0)
    for trial in range(50):
        layers = int(rng.integers(3, 120))
        start, width = int(rng.integers(-5, layers)), int(rng.integers(1, layers + 5))
        values = 1000 + 400 * rng.random(layers)
        values[max(0, start) : start + width] += 20000  # a bright run, sometimes running into an end
        assert np.array_equal(smooth(values[::-1], 1.3), smooth(values, 1.3)[::-1])
        a, b = detect_surface(values), detect_surface(values[::-1].copy())
        assert a.reversed != b.reversed or not a.confident, trial
        if a.reversed != b.reversed:
            assert b.surface == layers - 1 - a.surface and b.normal_surface == a.normal_surface
            depth = int(rng.integers(1, layers + 1))
            assert b.window(depth) == (layers - a.window(depth)[1], layers - a.window(depth)[0])


def test_a_sheet_running_into_the_end_has_one_edge_which_sets_the_order():
    values = np.array([100.0] * 12 + [900.0] * 9)  # air, then papyrus to the last layer
    found = detect_surface(values)
    assert found.reversed is False and found.falling is None
    assert found.surface == pytest.approx(11.5, abs=0.01)
    assert detect_surface(values[::-1].copy()).reversed is True


def test_with_both_edges_inside_the_surface_is_the_one_closer_to_the_centre():
    values = np.full(21, 100.0)
    values[5:15] = 900.0  # rising edge near 4.5 (5.5 from the centre 10), falling near 14.5 (4.5 from it)
    found = detect_surface(values)
    assert found.reversed is True and found.surface == pytest.approx(14.5, abs=0.01)
    assert found.rising == pytest.approx(4.5, abs=0.01)


def test_flat_short_and_non_finite_profiles_are_refused_naming_the_fragment():
    flat = DepthProfile("seg7", np.full(65, 1234.0), "uint16", 1, 100)
    with pytest.raises(ValueError, match=r"fragment 'seg7': flat depth profile"):
        detect_surface(flat)
    with pytest.raises(ValueError, match=r"at least 3 layers"):
        detect_surface(np.array([1.0, 2.0]), fragment_id="seg8")
    with pytest.raises(ValueError, match=r"non-finite"):
        detect_surface(np.array([1.0, np.nan, 2.0, 3.0]))


@pytest.mark.parametrize(
    ("values", "note"),
    [
        (np.array([30000.0] * 10 + [30500.0] * 11), "weak contrast"),
        (np.array([100.0] * 8 + [900.0] * 5 + [100.0] * 8), "both edges about equally close"),
    ],
)
def test_doubtful_profiles_are_flagged(values, note):
    found = detect_surface(values)
    assert found.confident is False and note in found.note


def test_windows_are_clipped_into_the_volume_and_too_deep_ones_refused():
    values = np.array([100.0] * 3 + [900.0] * 18)  # surface near 2.5 of 21
    found = detect_surface(values, fragment_id="thin")
    assert found.window(10) == (0, 10) and found.window(21) == (0, 21)
    assert detect_surface(values[::-1].copy()).window(10) == (11, 21)
    with pytest.raises(ValueError, match=r"fragment 'thin' has 21 layers, fewer than the model's input depth 22"):
        found.window(22)
