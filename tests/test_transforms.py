"""TileTransform and normalise: eval is exact and deterministic; training keeps image, label and valid aligned."""

from __future__ import annotations

import pickle
import random

import numpy as np
import pytest
from scipy import ndimage

from datamodules.augment.transforms import AugmentConfig, TileTransform, normalise

SIZE = 64

# Every probability 0: tests switch on only what they look at.
NONE = dict(
    flip_p=0.0,
    rotate90_p=0.0,
    shift_scale_rotate_p=0.0,
    brightness_contrast_p=0.0,
    noise_p=0.0,
    blur_p=0.0,
    coarse_dropout_p=0.0,
    depth_shift=0,
    slice_dropout_p=0.0,
    depth_reverse_p=0.0,
)
GEOMETRIC_ALL = dict(flip_p=1.0, rotate90_p=1.0, shift_scale_rotate_p=1.0, shift_limit=0.2, scale_limit=0.2)


def exact(raw: np.ndarray | float, scale: float = 65535) -> np.ndarray:
    """raw / scale rounded once to float32: what normalise must give."""
    return (np.asarray(raw, dtype=np.float64) / scale).astype(np.float32)


def only(**kwargs: object) -> AugmentConfig:
    return AugmentConfig(**{**NONE, **kwargs})


def slice_index_image(channels: int, size: int = SIZE, dtype: type = np.uint16) -> np.ndarray:
    """Slice k holds the constant k + 1, so a slice's value names where it came from."""
    return np.broadcast_to(np.arange(1, channels + 1, dtype=dtype), (size, size, channels)).copy()


def pattern(seed: int, size: int = SIZE) -> np.ndarray:
    """Random smooth blobs plus an asymmetric L, so any flip/rotation of the label is detectable."""
    rng = np.random.default_rng(seed)
    smooth = ndimage.gaussian_filter(rng.random((size, size)), 6)
    blobs = smooth > np.quantile(smooth, 0.75)
    blobs[6:42, 8:18] = True
    blobs[32:42, 8:34] = True
    return blobs


def planted(seed: int, channels: int) -> tuple[np.ndarray, np.ndarray]:
    """uint16 image whose every slice is the pattern (0.98 ink, 0.02 background), and the label."""
    ink = pattern(seed)
    values = np.where(ink, 0.98, 0.02) * 65535
    image = np.repeat(values.round().astype(np.uint16)[:, :, None], channels, axis=2)
    return image, ink.astype(np.float32)


def interior(label: np.ndarray, valid: np.ndarray, radius: int) -> np.ndarray:
    """Valid pixels whose (2r+1)^2 neighbourhood is all valid and of one label: free of interpolation/blur mixing."""
    size = 2 * radius + 1
    window = (size, size)
    uniform = ndimage.minimum_filter(label, window, mode="constant", cval=0) == ndimage.maximum_filter(
        label, window, mode="constant", cval=1
    )
    return uniform & (ndimage.minimum_filter(valid, window, mode="constant", cval=0) > 0.5)


def run(config: AugmentConfig | None, image: np.ndarray, seed: int, num_slices: int, *, train: bool = True):
    label = np.zeros(image.shape[:2], dtype=np.float32)
    valid = np.ones(image.shape[:2], dtype=np.float32)
    return TileTransform(config, num_slices, train=train)(image, label, valid, np.random.default_rng(seed))


# ----------------------------------------------------------------------------------------------- normalise


def test_normalise_is_exact_for_uint16_and_uint8() -> None:
    rng = np.random.default_rng(0)
    raw16 = np.concatenate([[0, 1, 32768, 65534, 65535], rng.integers(0, 65536, 2000)]).astype(np.uint16)
    out16 = normalise(raw16)
    assert out16.dtype == np.float32
    np.testing.assert_array_equal(out16, (raw16.astype(np.float64) / 65535).astype(np.float32))
    assert out16[0] == 0.0 and out16[4] == 1.0
    raw8 = np.arange(256, dtype=np.uint8)
    np.testing.assert_array_equal(normalise(raw8), (raw8.astype(np.float64) / 255).astype(np.float32))
    floats = rng.random(10)
    np.testing.assert_array_equal(normalise(floats), floats.astype(np.float32))
    assert normalise(floats).dtype == np.float32


@pytest.mark.parametrize("dtype", [np.int32, np.int16, np.bool_, np.uint32])
def test_normalise_rejects_other_dtypes(dtype: type) -> None:
    with pytest.raises(TypeError, match=np.dtype(dtype).name):
        normalise(np.zeros((2, 2), dtype=dtype))


# ---------------------------------------------------------------------------------------------------- eval


@pytest.mark.parametrize(
    ("config", "train"),
    [(AugmentConfig(), False), (None, True), (AugmentConfig(enabled=False), True), (None, False)],
)
def test_eval_takes_centre_window_normalises_only_and_is_deterministic(
    config: AugmentConfig | None, train: bool
) -> None:
    rng = np.random.default_rng(1)
    image = rng.integers(0, 65536, (SIZE, 48, 10), dtype=np.uint16)  # non-square: eval never rotates
    label = (rng.random((SIZE, 48)) > 0.5).astype(np.float32)
    valid = (rng.random((SIZE, 48)) > 0.2).astype(np.float32)
    transform = TileTransform(config, 6, train=train)
    assert not transform.augment
    outs = [transform(image, label, valid, np.random.default_rng(seed)) for seed in (0, 1, 2)]
    for out_image, out_label, out_valid in outs:
        assert out_image.shape == (SIZE, 48, 6) and out_image.dtype == np.float32 and out_image.flags.c_contiguous
        np.testing.assert_array_equal(out_image, exact(image[:, :, 2:8]))
        np.testing.assert_array_equal(out_label, label)
        np.testing.assert_array_equal(out_valid, valid)
        assert out_label.dtype == out_valid.dtype == np.float32


@pytest.mark.parametrize(("channels", "first"), [(7, 0), (8, 0), (9, 1), (10, 1), (11, 2)])
def test_eval_centre_offset_is_half_the_margin_rounded_down(channels: int, first: int) -> None:
    out, _, _ = run(AugmentConfig(), slice_index_image(channels, dtype=np.uint8), 0, 7, train=False)
    np.testing.assert_array_equal(out[0, 0], exact(np.arange(first, first + 7) + 1, 255))


def test_eval_casts_uint8_labels_and_masks_to_float32() -> None:
    image = slice_index_image(3)
    label = np.ones((SIZE, SIZE), dtype=np.uint8)
    _, out_label, out_valid = TileTransform(None, 3, train=False)(image, label, label, np.random.default_rng(0))
    assert out_label.dtype == out_valid.dtype == np.float32 and out_label.flags.c_contiguous


# -------------------------------------------------------------------------------------------------- errors


def test_num_slices_above_channels_is_an_error_naming_both() -> None:
    with pytest.raises(ValueError, match=r"num_slices=5.*C=3"):
        run(None, slice_index_image(3), 0, 5, train=False)
    with pytest.raises(ValueError, match=r"num_slices=5.*C=3"):
        run(AugmentConfig(), slice_index_image(3), 0, 5)


def test_bad_dtype_and_shapes_are_errors() -> None:
    with pytest.raises(TypeError, match="int32"):
        run(AugmentConfig(), np.zeros((SIZE, SIZE, 4), dtype=np.int32), 0, 4)
    transform = TileTransform(AugmentConfig(), 2, train=True)
    ones = np.ones((SIZE, SIZE), dtype=np.float32)
    with pytest.raises(ValueError, match=r"\[H, W, C\]"):
        transform(np.zeros((SIZE, SIZE), dtype=np.uint16), ones, ones, np.random.default_rng(0))
    with pytest.raises(ValueError, match="valid shape"):
        transform(slice_index_image(4), ones, ones[:10], np.random.default_rng(0))
    with pytest.raises(ValueError, match="num_slices"):
        TileTransform(None, 0, train=False)
    with pytest.raises(ValueError, match="square"):
        transform(slice_index_image(4, size=SIZE)[:, :40], ones[:, :40], ones[:, :40], np.random.default_rng(0))


def test_non_square_tiles_train_without_rotate90() -> None:
    image = slice_index_image(6)[:, :40]
    out = run(AugmentConfig(rotate90_p=0.0, shift_scale_rotate_p=1.0, flip_p=1.0), image, 0, 4)
    assert out[0].shape == (SIZE, 40, 4) and out[1].shape == out[2].shape == (SIZE, 40)


@pytest.mark.parametrize(
    ("setting", "value"),
    [
        ("flip_p", 1.5),
        ("noise_p", -0.1),
        ("blur_p", float("nan")),
        ("blur_limit", 2),
        ("blur_limit", 5.0),
        ("coarse_dropout_size", 1.0),
        ("coarse_dropout_size", 0.0),
        ("coarse_dropout_holes", 0),
        ("scale_limit", 1.0),
        ("noise_std", 2.0),
        ("depth_shift", -1),
        ("slice_dropout_max", 0),
        ("rotate_limit", 200.0),
        ("flip_p", "0.5"),
    ],
)
def test_bad_config_values_are_errors_naming_the_setting(setting: str, value: object) -> None:
    with pytest.raises(ValueError, match=f"AugmentConfig.{setting}"):
        AugmentConfig(**{setting: value})


# ----------------------------------------------------------------------------------------------- alignment


@pytest.mark.parametrize("seed", range(6))
def test_every_transform_at_p1_keeps_label_on_the_planted_pattern(seed: int) -> None:
    """All transforms on (coarse dropout aside: it blanks image only, by design): label still marks the ink."""
    config = AugmentConfig(
        **GEOMETRIC_ALL,
        brightness_contrast_p=1.0,
        brightness_limit=0.1,
        contrast_limit=0.1,
        noise_p=1.0,
        noise_std=0.02,
        blur_p=1.0,
        coarse_dropout_p=0.0,
        depth_shift=2,
        slice_dropout_p=1.0,
        depth_reverse_p=1.0,
    )
    image, ink = planted(seed, 14)
    transform = TileTransform(config, 10, train=True)
    out_image, out_label, out_valid = transform(image, ink, np.ones_like(ink), np.random.default_rng(seed))
    assert out_image.shape == (SIZE, SIZE, 10)
    assert not np.array_equal(out_label, ink), "the geometric transforms did not move the label"
    checked = interior(out_label, out_valid, radius=3)
    assert checked.sum() > 0.1 * SIZE * SIZE and (out_label[checked] > 0.5).sum() > 50
    np.testing.assert_array_equal(out_image.mean(axis=2)[checked] > 0.5, out_label[checked] > 0.5)


def test_default_config_keeps_label_on_the_planted_pattern_over_many_seeds() -> None:
    transform = TileTransform(AugmentConfig(coarse_dropout_p=0.0), 10, train=True)
    moved = 0
    for seed in range(40):
        image, ink = planted(seed, 14)
        out_image, out_label, out_valid = transform(image, ink, np.ones_like(ink), np.random.default_rng(seed))
        moved += not np.array_equal(out_label, ink)
        checked = interior(out_label, out_valid, radius=3)
        # Median over slices: robust to the (up to 2) blanked slices and to per-slice noise.
        image_ink = np.median(out_image, axis=2)[checked] > 0.5
        np.testing.assert_array_equal(image_ink, out_label[checked] > 0.5, err_msg=f"seed {seed}")
    assert moved > 30


def test_pixels_moved_in_from_outside_are_invalid_and_unlabelled() -> None:
    config = only(shift_scale_rotate_p=1.0, shift_limit=0.3, scale_limit=0.3, rotate_limit=45.0)
    transform = TileTransform(config, 4, train=True)
    ones = np.ones((SIZE, SIZE), dtype=np.float32)
    image = np.full((SIZE, SIZE, 4), 50000, dtype=np.uint16)
    invalid_fraction = []
    for seed in range(10):
        out_image, out_label, out_valid = transform(image, ones, ones, np.random.default_rng(seed))
        outside = out_valid == 0
        invalid_fraction.append(outside.mean())
        assert set(np.unique(out_valid)) <= {0.0, 1.0} and set(np.unique(out_label)) <= {0.0, 1.0}
        assert (out_label[outside] == 0).all(), "a pixel from outside the tile is labelled as ink"
        np.testing.assert_array_equal(out_label, out_valid)  # label was 1 wherever valid: they move together
        # Fill is 0, never a reflection of the tile: away from the bilinear seam the image is 0 there.
        deep_outside = ndimage.binary_erosion(outside, iterations=2, border_value=1)
        assert (out_image[deep_outside] == 0).all()
    assert max(invalid_fraction) > 0.1


def test_coarse_dropout_blanks_image_only() -> None:
    config = only(coarse_dropout_p=1.0, coarse_dropout_holes=4, coarse_dropout_size=0.2)
    image = np.full((SIZE, SIZE, 6), 30000, dtype=np.uint16)
    rng = np.random.default_rng(3)
    label = (rng.random((SIZE, SIZE)) > 0.5).astype(np.float32)
    valid = (rng.random((SIZE, SIZE)) > 0.3).astype(np.float32)
    transform = TileTransform(config, 6, train=True)
    for seed in range(5):
        out_image, out_label, out_valid = transform(image, label, valid, np.random.default_rng(seed))
        np.testing.assert_array_equal(out_label, label)
        np.testing.assert_array_equal(out_valid, valid)
        holes = out_image == 0
        assert holes.any() and (holes == holes[:, :, :1]).all(), "holes go through every slice"
        hole_mask = holes[:, :, 0]
        assert hole_mask.mean() <= 4 * 0.2**2 + 1e-9
        np.testing.assert_array_equal(out_image[~holes], exact(30000))


def test_blur_does_not_move_the_image() -> None:
    """A blurred point keeps its centre of mass: a shifted or one-sided kernel would misalign image and label."""
    image = np.zeros((SIZE, SIZE, 2), dtype=np.float32)
    image[30, 33] = 1.0
    transform = TileTransform(only(blur_p=1.0, blur_limit=7), 2, train=True)
    rows, cols = np.mgrid[:SIZE, :SIZE]
    spread = []
    for seed in range(30):
        out = transform(image, image[:, :, 0], image[:, :, 0], np.random.default_rng(seed))[0][:, :, 0]
        total = out.sum()
        spread.append((out > 0).sum())
        assert abs((rows * out).sum() / total - 30) < 0.3 and abs((cols * out).sum() / total - 33) < 0.3
    assert min(spread) > 1  # it did blur


# ---------------------------------------------------------------------------------------- many channels


def test_each_albumentations_transform_treats_38_slices_like_one() -> None:
    """All slices at once (`datamodules.augment.cpu_transforms`) must equal slice-by-slice processing (C = 38)."""
    config = AugmentConfig(
        **GEOMETRIC_ALL,
        rotate_limit=30.0,
        brightness_contrast_p=1.0,
        noise_p=0.0,  # per-pixel draws depend on the array shape
        blur_p=1.0,
        coarse_dropout_p=1.0,
        depth_shift=0,
        slice_dropout_p=0.0,
    )
    rng = np.random.default_rng(7)
    image = rng.integers(0, 65536, (SIZE, SIZE, 38), dtype=np.uint16)
    label = pattern(1).astype(np.float32)
    valid = np.ones_like(label)
    full = TileTransform(config, 38, train=True)
    single = TileTransform(config, 1, train=True)
    for seed in range(4):
        out_full, label_full, valid_full = full(image, label, valid, np.random.default_rng(seed))
        for k in (0, 3, 4, 5, 17, 35, 36, 37):
            out_k, label_k, valid_k = single(image[:, :, k : k + 1], label, valid, np.random.default_rng(seed))
            # OpenCV's warp quantises bilinear weights to 1/32 px by a different path for 1 and for 38 channels:
            # up to 1/32 of the step between neighbours at a pixel, about nothing on average.
            difference = np.abs(out_full[:, :, k] - out_k[:, :, 0])
            assert difference.max() < 1 / 32 and difference.mean() < 0.004, f"seed {seed} slice {k}"
            np.testing.assert_array_equal(label_full, label_k)
            np.testing.assert_array_equal(valid_full, valid_k)


def test_noise_reaches_every_slice() -> None:
    image = np.full((SIZE, SIZE, 38), 32768, dtype=np.uint16)
    out, _, _ = run(only(noise_p=1.0, noise_std=0.1), image, 0, 38)
    stds = out.reshape(-1, 38).std(axis=0)
    assert (stds > 0.005).all()


def test_brightness_contrast_matches_albumentations_semantics() -> None:
    """Our float32 apply must give what RandomBrightnessContrast gives: x * alpha + beta, clipped to [0, 1]."""
    import albumentations as A

    from datamodules.augment.cpu_transforms import FastBrightnessContrast as _BrightnessContrast

    x = np.random.default_rng(0).random((16, 16, 7), dtype=np.float32)
    for seed in range(5):
        ours, stock = (
            cls(brightness_limit=0.4, contrast_limit=0.4, p=1.0)
            for cls in (_BrightnessContrast, A.RandomBrightnessContrast)
        )
        for transform in (ours, stock):
            transform.set_random_seed(seed)
        np.testing.assert_allclose(ours(image=x)["image"], stock(image=x)["image"], atol=1e-6)


# ---------------------------------------------------------------------------------------------------- depth


def test_depth_shift_picks_a_contiguous_window_that_varies_with_rng() -> None:
    config = AugmentConfig(**{**GEOMETRIC_ALL, "depth_shift": 2, "brightness_contrast_p": 0.0, "noise_p": 0.0})
    config.coarse_dropout_p = config.slice_dropout_p = 0.0
    image = slice_index_image(14)  # num_slices 10 + 2 on each side
    offsets = set()
    for seed in range(40):
        out, _, valid = run(config, image, seed, 10)
        inside = interior(np.zeros_like(valid), valid, radius=3)
        values = np.rint(out[inside] * 65535)  # [pixels, 10]
        assert (values == values[:1]).all(), "a slice is not constant: slices were mixed"
        offset = int(values[0, 0]) - 1
        np.testing.assert_array_equal(values[0], np.arange(offset, offset + 10) + 1)
        offsets.add(offset)
    assert offsets == {0, 1, 2, 3, 4}


@pytest.mark.parametrize(("channels", "depth_shift", "expected"), [(11, 2, {0, 1}), (14, 0, {2}), (14, 1, {1, 2, 3})])
def test_depth_shift_stays_within_margin_and_setting(channels: int, depth_shift: int, expected: set[int]) -> None:
    offsets = {
        int(np.rint(run(only(depth_shift=depth_shift), slice_index_image(channels), seed, 10)[0][0, 0, 0] * 65535)) - 1
        for seed in range(30)
    }
    assert offsets == expected


def test_slice_dropout_blanks_whole_slices() -> None:
    image = slice_index_image(8)
    counts = set()
    for seed in range(30):
        out, _, _ = run(only(slice_dropout_p=1.0, slice_dropout_max=3), image, seed, 8)
        blank = (out == 0).all(axis=(0, 1))
        assert ((out == 0).any(axis=(0, 1)) == blank).all(), "a slice was only partly blanked"
        counts.add(int(blank.sum()))
        kept = ~blank
        np.testing.assert_array_equal(out[0, 0, kept], exact(np.arange(8)[kept] + 1))
    assert counts == {1, 2, 3}
    out, _, _ = run(only(slice_dropout_p=0.0), image, 0, 8)
    assert (out > 0).all()


def test_depth_reversal_reverses_the_window() -> None:
    image = slice_index_image(6)
    out, _, _ = run(only(depth_reverse_p=1.0), image, 0, 6)
    np.testing.assert_array_equal(out[3, 5], exact(np.arange(6, 0, -1)))
    assert out.flags.c_contiguous
    seen = {int(np.rint(run(only(depth_reverse_p=0.5), image, s, 6)[0][0, 0, 0] * 65535)) for s in range(20)}
    assert seen == {1, 6}


# ----------------------------------------------------------------------------------------- reproducibility


def test_same_rng_state_gives_identical_output_and_different_seeds_differ() -> None:
    rng = np.random.default_rng(5)
    image = rng.integers(0, 65536, (SIZE, SIZE, 14), dtype=np.uint16)
    label = pattern(5).astype(np.float32)
    valid = np.ones_like(label)
    config = AugmentConfig(noise_p=1.0, blur_p=1.0, coarse_dropout_p=1.0, shift_scale_rotate_p=1.0)
    first = TileTransform(config, 10, train=True)
    second = TileTransform(config, 10, train=True)

    def outputs(transform: TileTransform, seed: int) -> tuple[np.ndarray, ...]:
        return transform(image, label, valid, np.random.default_rng(seed))

    reference = [outputs(first, seed) for seed in range(4)]
    # Global RNGs and call history must not matter: reseed them, call in another order, on another instance.
    np.random.seed(123)
    random.seed(123)
    for seed in (3, 1, 0, 2):
        for got, want in zip(outputs(second, seed), reference[seed], strict=True):
            np.testing.assert_array_equal(got, want)
    for got, want in zip(outputs(first, 2), reference[2], strict=True):
        np.testing.assert_array_equal(got, want)
    for a, b in zip(reference, reference[1:], strict=False):
        assert not np.array_equal(a[0], b[0])


def test_outputs_are_float32_contiguous_and_own_their_memory() -> None:
    image = np.random.default_rng(0).random((SIZE, SIZE, 4), dtype=np.float32)
    original = image.copy()
    for seed in range(10):
        out = run(AugmentConfig(slice_dropout_p=1.0, depth_reverse_p=0.5), image, seed, 4)
        for array in out:
            assert array.dtype == np.float32 and array.flags.c_contiguous
        assert out[0].shape == (SIZE, SIZE, 4)
    np.testing.assert_array_equal(image, original)  # slice dropout never writes into the caller's array


def test_survives_pickling_for_dataloader_workers() -> None:
    image = np.random.default_rng(0).integers(0, 65536, (SIZE, SIZE, 8), dtype=np.uint16)
    ones = np.ones((SIZE, SIZE), dtype=np.float32)
    config = AugmentConfig(noise_p=1.0, blur_p=1.0, shift_scale_rotate_p=1.0)
    transform = TileTransform(config, 6, train=True)
    clone = pickle.loads(pickle.dumps(transform))
    for got, want in zip(
        clone(image, ones, ones, np.random.default_rng(9)),
        transform(image, ones, ones, np.random.default_rng(9)),
        strict=True,
    ):
        np.testing.assert_array_equal(got, want)


@pytest.mark.filterwarnings("error")
@pytest.mark.parametrize("blur_limit", [3, 4, 8])
def test_building_the_pipeline_warns_about_nothing(blur_limit: int) -> None:
    config = AugmentConfig(blur_limit=blur_limit, **{name: 1.0 for name in ("blur_p", "noise_p", "coarse_dropout_p")})
    out, _, _ = run(config, slice_index_image(8), 0, 6)
    assert out.shape == (SIZE, SIZE, 6)


def test_flips_and_rotations_cover_the_eight_views_as_often_as_albumentations_draws_them() -> None:
    """Flips and rot90 are applied as views before normalising: each output is one of the 8 views of the input,
    image, label and valid moved together, with the frequencies of HorizontalFlip, VerticalFlip, RandomRotate90."""
    label = pattern(5)
    image = np.repeat(label[:, :, None].astype(np.uint16) * 1000 + 7, 4, axis=2)
    valid = np.ones_like(label, dtype=np.float32)
    valid[:5] = 0
    views = {}
    for flip in (False, True):
        base = label[:, ::-1] if flip else label
        for k in range(4):
            views[np.rot90(base, k).tobytes()] = (flip, k)
    transform = TileTransform(only(flip_p=0.5, rotate90_p=0.5), 4, train=True)
    counts: dict[tuple[bool, int], int] = {}
    rotated = 0
    for seed in range(800):
        out_image, out_label, out_valid = transform(image, label.astype(np.float32), valid, np.random.default_rng(seed))
        key = out_label.astype(bool).tobytes()
        assert key in views
        assert np.array_equal(out_image[:, :, 0] > 0.01, out_label > 0)
        assert out_image.flags.c_contiguous and out_valid.sum() == valid.sum()
        counts[views[key]] = counts.get(views[key], 0) + 1
        rotated += views[key][1] != 0
    assert len(counts) == 8
    # Two flips make a rotation by 180°, so the share of rotated views is enumerated from the three draws.
    assert abs(rotated / 800 - (1 - views_without_rotation())) < 0.06


def views_without_rotation() -> float:
    """Share of draws whose net view is an identity or a single flip (no rotation), by enumeration."""
    label = pattern(5)
    identity_or_flip = {label.tobytes(), label[:, ::-1].tobytes()}
    total = 0.0
    for h in (0, 1):
        for v in (0, 1):
            for r in range(5):  # r == 4: no rotation drawn
                p = 0.5 * 0.5 * (0.5 if r == 4 else 0.5 / 4)
                out = label[:, ::-1] if h else label
                out = out[::-1] if v else out
                out = out if r == 4 else np.rot90(out, r)
                total += p * (out.tobytes() in identity_or_flip)
    return total
