"""The all-channels-at-once transforms give what their albumentations parents give for the same draws."""

from __future__ import annotations

import random

import albumentations as A
import cv2
import numpy as np
import pytest

from datamodules.augment import cpu_transforms as fast
from utils.layout import to_channels_first, to_channels_last

SHAPE = (40, 40, 9)  # more than 4 channels: albumentations' chunked path


def _run(transform: A.BasicTransform, image: np.ndarray, mask: np.ndarray, seed: int) -> dict[str, np.ndarray]:
    compose = A.Compose([transform], additional_targets={"valid": "mask"})
    compose.set_random_seed(seed)
    return compose(image=image, mask=mask, valid=mask.copy())


def _inputs(seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    image = rng.uniform(0.1, 0.9, SHAPE).astype(np.float32)
    mask = (rng.random(SHAPE[:2]) > 0.6).astype(np.float32)
    return image, mask


PAIRS = [
    (
        A.Affine,
        fast.FastAffine,
        dict(
            translate_percent=(-0.2, 0.2),
            scale=(0.8, 1.2),
            rotate=(-45, 45),
            interpolation=cv2.INTER_LINEAR,
            mask_interpolation=cv2.INTER_NEAREST,
            border_mode=cv2.BORDER_CONSTANT,
            fill=0,
            fill_mask=0,
        ),
    ),
    (A.GaussianBlur, fast.FastGaussianBlur, dict(blur_limit=(3, 7))),
    (A.MotionBlur, fast.FastMotionBlur, dict(blur_limit=(3, 7), allow_shifted=False, direction_range=(0.0, 0.0))),
    (A.RandomBrightnessContrast, fast.FastBrightnessContrast, {}),
]


@pytest.mark.parametrize(("parent", "child", "kwargs"), PAIRS, ids=[p[0].__name__ for p in PAIRS])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_same_output_as_the_albumentations_parent(parent: type, child: type, kwargs: dict, seed: int) -> None:
    image, mask = _inputs(seed)
    expected = _run(parent(p=1.0, **kwargs), image, mask, seed)
    got = _run(child(p=1.0, **kwargs), image, mask, seed)
    changed = False
    for key in ("image", "mask", "valid"):
        assert got[key].shape == expected[key].shape and got[key].dtype == expected[key].dtype
        if parent is A.Affine and key == "image":
            # OpenCV quantises bilinear weights to 1/32 px, differently for <= 4 channels (albumentations' chunks)
            # and for more: neighbours up to 0.8 apart differ by up to 0.8/32 at a pixel, nothing on average.
            difference = np.abs(got[key] - expected[key])
            assert difference.max() < 0.8 / 32 and difference.mean() < 0.005
            continue
        np.testing.assert_allclose(got[key], expected[key], atol=2e-6, err_msg=key)
        changed |= not np.array_equal(got[key], {"image": image, "mask": mask, "valid": mask}[key])
    assert changed or parent is A.RandomRotate90  # rot90 may draw 0 turns


def test_noise_has_the_drawn_std_per_pixel_and_is_reproducible() -> None:
    image = np.full((64, 64, 9), 0.5, dtype=np.float32)
    stds = []
    for seed in range(6):
        out = _run(fast.FastGaussNoise(std_range=(0.0, 0.1), per_channel=True, p=1.0), image, image[..., 0], seed)
        again = _run(fast.FastGaussNoise(std_range=(0.0, 0.1), per_channel=True, p=1.0), image, image[..., 0], seed)
        assert np.array_equal(out["image"], again["image"])
        noise = out["image"] - image
        assert abs(noise.mean()) < 0.005 and np.array_equal(out["mask"], image[..., 0])
        assert not np.allclose(noise[..., 0], noise[..., 1])  # independent per channel
        stds.append(noise.std())
    assert max(stds) <= 0.1 + 0.003 and max(stds) - min(stds) > 0.01
    # The same std as the parent draws for the same seed (the noise itself comes from another generator).
    parent = _run(A.GaussNoise(std_range=(0.0, 0.1), per_channel=True, p=1.0), image, image[..., 0], 3)
    child = _run(fast.FastGaussNoise(std_range=(0.0, 0.1), per_channel=True, p=1.0), image, image[..., 0], 3)
    assert abs((parent["image"] - image).std() - (child["image"] - image).std()) < 0.003


def test_python_random_untouched() -> None:
    state = random.getstate()
    _run(fast.FastGaussNoise(std_range=(0.0, 0.1), p=1.0), *_inputs(0), 0)
    assert random.getstate() == state


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
@pytest.mark.parametrize("channels", [1, 3, 34])
def test_layout_changes_are_exact_transposes(dtype: type, channels: int) -> None:
    chw = (np.random.default_rng(channels).random((channels, 17, 23)) * 200).astype(dtype)
    hwc = to_channels_last(chw)
    assert hwc.flags.c_contiguous and np.array_equal(hwc, chw.transpose(1, 2, 0))
    back = to_channels_first(hwc)
    assert back.flags.c_contiguous and np.array_equal(back, chw)
    flipped = hwc[:, ::-1]  # a view, as the flips return
    assert np.array_equal(to_channels_first(flipped), flipped.transpose(2, 0, 1))
