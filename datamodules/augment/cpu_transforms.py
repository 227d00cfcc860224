"""albumentations transforms with their own parameters and sampling, applied to all of a tile's slices at once.

albumentations runs OpenCV on at most 4 channels per call, so a 30-slice tile goes through a flip, a warp or a
blur in 8 chunks plus a re-stack, and draws gaussian noise through numpy: per 256 x 256 x 30 float32 tile (one
core) the affine warp 26 ms, a blur 31-35 ms and noise 17 ms. OpenCV's warpAffine, sepFilter2D
and filter2D take any number of channels (2-7 ms), and OpenCV draws
the noise (5 ms). Each subclass below overrides only how the parameters albumentations drew are applied,
with the same border and interpolation rules, so the transform means exactly what its albumentations parent means
(`tests/test_cpu_transforms.py` compares them).
"""

from __future__ import annotations

import os
from typing import Any

import cv2
import numpy as np

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
import albumentations as A  # noqa: E402

__all__ = [
    "FastAffine",
    "FastBrightnessContrast",
    "FastGaussNoise",
    "FastGaussianBlur",
    "FastMotionBlur",
]

_REFLECT = cv2.BORDER_REFLECT_101  # albumentations' (and OpenCV's) default border for convolutions


class FastAffine(A.Affine):
    """Affine warp of every channel in one ``cv2.warpAffine`` call (image, and masks with their own interpolation)."""

    def _warp(self, img: np.ndarray, matrix: np.ndarray, output_shape: tuple[int, ...], interpolation: int, fill: Any):
        height, width = output_shape[:2]
        out = cv2.warpAffine(
            np.ascontiguousarray(img),
            np.asarray(matrix, dtype=np.float64)[:2],
            (width, height),
            flags=interpolation,
            borderMode=self.border_mode,
            borderValue=fill,
        )
        return _keep_channels(img, out)

    def apply(self, img: np.ndarray, matrix: np.ndarray, output_shape: tuple[int, ...], **params: Any) -> np.ndarray:
        return self._warp(img, matrix, output_shape, self.interpolation, self.fill)

    def apply_to_mask(
        self, mask: np.ndarray, matrix: np.ndarray, output_shape: tuple[int, ...], **params: Any
    ) -> np.ndarray:
        return self._warp(mask, matrix, output_shape, self.mask_interpolation, self.fill_mask)


class FastGaussianBlur(A.GaussianBlur):
    """The drawn 1-D gaussian kernel applied along rows and columns of every channel at once."""

    def apply(self, img: np.ndarray, kernel: np.ndarray, **params: Any) -> np.ndarray:
        k = np.asarray(kernel, dtype=np.float32)
        return _keep_channels(img, cv2.sepFilter2D(np.ascontiguousarray(img), -1, k, k, borderType=_REFLECT))


class FastMotionBlur(A.MotionBlur):
    """The drawn motion kernel applied to every channel at once."""

    def apply(self, img: np.ndarray, kernel: np.ndarray, **params: Any) -> np.ndarray:
        k = np.asarray(kernel, dtype=np.float32)
        return _keep_channels(img, cv2.filter2D(np.ascontiguousarray(img), -1, k, borderType=_REFLECT))


class FastGaussNoise(A.GaussNoise):
    """Per-pixel, per-channel gaussian noise (``per_channel=True``, mean 0) drawn by OpenCV; std drawn as the parent.

    OpenCV's generator is seeded from the transform's own generator before every draw, so the same seed still
    gives the same tile in any worker.
    """

    def get_params_dependent_on_data(self, params: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
        image = data["image"]
        sigma = self.py_random.uniform(*self.std_range)
        noise = np.empty(image.shape, dtype=np.float32)
        cv2.setRNGSeed(int(self.random_generator.integers(2**31 - 1)))
        cv2.randn(noise.reshape(image.shape[0], -1), 0.0, sigma)  # a 2-D view: one channel for OpenCV
        return {"noise_map": noise}

    def apply(self, img: np.ndarray, noise_map: np.ndarray, **params: Any) -> np.ndarray:
        out = np.add(img, noise_map, dtype=np.float32)
        return np.clip(out, 0.0, 1.0, out=out)


class FastBrightnessContrast(A.RandomBrightnessContrast):
    """RandomBrightnessContrast with the same parameters and sampling, computed in float32.

    The stock ``apply`` (albucore ``multiply_add_opencv``) builds two full-size constant arrays and goes through
    float64: about 18 ms for a 256 x 256 x 34 tile against about 2 ms here. Only ever given float32 images.
    """

    def apply(self, img: np.ndarray, alpha: float, beta: float, **params: Any) -> np.ndarray:
        out = np.multiply(img, np.float32(alpha), dtype=np.float32)
        out += np.float32(beta)
        return np.clip(out, 0.0, 1.0, out=out)


def _keep_channels(img: np.ndarray, out: np.ndarray) -> np.ndarray:
    """OpenCV drops a trailing channel axis of length 1; put it back so shapes match the input."""
    return out[..., None] if img.ndim == 3 and out.ndim == 2 else out
