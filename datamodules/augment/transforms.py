"""Normalisation and training augmentation of one tile: ``[H, W, C]`` raw slices → ``[H, W, D]`` float32.

Order of operations in training (each step is skipped when its probability is 0):

1. depth window: a random offset into the ``C - D`` margin slices the Dataset read around the nominal window;
2. flips and rotations by 90° of image, label and valid, as views (numpy, drawn from the caller's ``rng`` with
   albumentations' probabilities);
3. normalisation to float32 ``[0, 1]``: only the ``D`` chosen slices, gathered from the views in one pass;
4. albumentations, seeded from the caller's ``rng`` (its transforms applied to all slices at once,
   `datamodules.augment.cpu_transforms`): Affine on image, label and valid together, then photometric
   (brightness/contrast, blur, noise, coarse dropout) on the image only;
5. slice dropout (whole slices set to 0), then depth reversal.

Decisions worth knowing:

- Values stay in ``[0, 1]``: albumentations clips float32 results of brightness/contrast, blur and noise to
  ``[0, 1]`` (albucore's ``clipped``), so inputs that arrive as floats are expected in ``[0, 1]`` when training.
  Clipping loses nothing for raw uint8/uint16 data, which normalises into ``[0, 1]``.
- Geometry pads with 0 (``BORDER_CONSTANT``) and moves masks with nearest interpolation, so pixels that come in
  from outside the tile get ``valid = 0`` and are never scored as labelled; nothing is reflected.
  Image pixels within about one pixel of that edge are bilinear blends with the 0 fill.
- Coarse dropout blanks the image only; label and valid are unchanged, so the model must infer ink under a hole
  from its surroundings (cutout as regularisation) rather than learn "no signal means no ink".
- MotionBlur keeps its kernel centred and symmetric (``allow_shifted=False``, ``direction_range=(0, 0)``):
  a shifted or one-sided kernel would move the image by up to a pixel relative to the label.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass, fields

import cv2
import numpy as np

# albumentations asks PyPI for a newer version on import; there is no network at run time.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
import albumentations as A  # noqa: E402

from datamodules.augment.cpu_transforms import (  # noqa: E402
    FastAffine,
    FastBrightnessContrast,
    FastGaussianBlur,
    FastGaussNoise,
    FastMotionBlur,
)
from utils.checks import check_int, check_range  # noqa: E402

__all__ = ["BACKENDS", "AugmentConfig", "TileTransform", "normalise"]

BACKENDS = ("albumentations", "torch")

_PROBABILITIES = (
    "flip_p",
    "rotate90_p",
    "shift_scale_rotate_p",
    "brightness_contrast_p",
    "noise_p",
    "blur_p",
    "coarse_dropout_p",
    "slice_dropout_p",
    "depth_reverse_p",
)


@dataclass
class AugmentConfig:
    """Training augmentation; every transform has an on/off (probability 0 = off) and its strength.

    Attributes:
        flip_p: Probability of a horizontal flip, and independently of a vertical flip.
        rotate90_p: Probability of a random multiple-of-90° rotation (the competition's test fragments were
            rotated). Needs square tiles.
        shift_scale_rotate_p: Probability of an affine warp with the three limits below.
        shift_limit: Largest translation, as a fraction of the tile size, in [0, 1].
        scale_limit: Zoom drawn from ``[1 - scale_limit, 1 + scale_limit]``; in [0, 1).
        rotate_limit: Largest rotation in degrees, in [0, 180].
        brightness_contrast_p: Probability of a brightness/contrast change.
        brightness_limit: Largest brightness offset, in normalised units.
        contrast_limit: Largest relative contrast change.
        noise_p: Probability of per-pixel gaussian noise.
        noise_std: Largest noise standard deviation in normalised units, in [0, 1].
        blur_p: Probability of a gaussian or motion blur (one of the two, equally likely).
        blur_limit: Largest blur kernel size, >= 3 (an even limit is rounded down to odd).
        coarse_dropout_p: Probability of blanking rectangular holes in the image.
        coarse_dropout_holes: Largest number of holes, >= 1.
        coarse_dropout_size: Largest hole side as a fraction of the tile side, in (0, 1); the smallest is a
            quarter of it.
        depth_shift: Largest shift of the slice window, in slices; the Dataset reads up to this many extra
            slices on each side. 0 turns the shift off.
        slice_dropout_p: Probability of blanking between 1 and ``slice_dropout_max`` whole slices.
        slice_dropout_max: Largest number of slices blanked, >= 1.
        depth_reverse_p: Probability of reversing the slice order (some segments are stored reversed).
        enabled: Master switch for training augmentation.
        backend: Where the transforms run. ``albumentations``: per tile in the loader's workers (CPU).
            ``torch``: per batch on the device the batch lands on (`datamodules.augment.batch_augment`), so the workers
            only read and normalise; for GPU training. Same keys, same meaning; the depth shift is drawn when
            the tile is read in both.
    """

    flip_p: float = 0.5
    rotate90_p: float = 0.5
    shift_scale_rotate_p: float = 0.5
    shift_limit: float = 0.1
    scale_limit: float = 0.1
    rotate_limit: float = 45.0
    brightness_contrast_p: float = 0.5
    brightness_limit: float = 0.2
    contrast_limit: float = 0.2
    noise_p: float = 0.3
    noise_std: float = 0.05
    blur_p: float = 0.2
    blur_limit: int = 5
    coarse_dropout_p: float = 0.3
    coarse_dropout_holes: int = 4
    coarse_dropout_size: float = 0.2
    depth_shift: int = 2
    slice_dropout_p: float = 0.2
    slice_dropout_max: int = 2
    depth_reverse_p: float = 0.0
    enabled: bool = True
    backend: str = "albumentations"

    def __post_init__(self) -> None:
        """Reject settings that would fail late (inside a DataLoader worker) or silently mean something else."""
        for f in fields(self):
            value = getattr(self, f.name)
            if f.type in ("int", int):
                check_int(f"AugmentConfig.{f.name}", value, allow_numpy=True)
            if f.type in ("float", float) and (isinstance(value, bool) or not isinstance(value, (int, float))):
                raise ValueError(f"AugmentConfig.{f.name} must be a number, got {value!r}")
        for name in _PROBABILITIES:
            check_range(f"AugmentConfig.{name}", getattr(self, name), 0.0, 1.0)
        check_range("AugmentConfig.shift_limit", self.shift_limit, 0.0, 1.0)
        check_range("AugmentConfig.scale_limit", self.scale_limit, 0.0, 1.0, high_open=True)
        check_range("AugmentConfig.rotate_limit", self.rotate_limit, 0.0, 180.0)
        check_range("AugmentConfig.brightness_limit", self.brightness_limit, 0.0, 1.0)
        check_range("AugmentConfig.contrast_limit", self.contrast_limit, 0.0, 1.0)
        check_range("AugmentConfig.noise_std", self.noise_std, 0.0, 1.0)
        check_range(
            "AugmentConfig.coarse_dropout_size", self.coarse_dropout_size, 0.0, 1.0, low_open=True, high_open=True
        )
        if self.blur_limit < 3:
            raise ValueError(f"AugmentConfig.blur_limit must be >= 3 (a blur kernel size), got {self.blur_limit}")
        for name in ("coarse_dropout_holes", "slice_dropout_max"):
            check_int(f"AugmentConfig.{name}", getattr(self, name), minimum=1, allow_numpy=True)
        check_int("AugmentConfig.depth_shift", self.depth_shift, minimum=0, allow_numpy=True)
        if self.backend not in BACKENDS:
            raise ValueError(f"AugmentConfig.backend={self.backend!r}: must be one of {', '.join(BACKENDS)}")


def normalise(
    image: np.ndarray, intensity: tuple[float, float] | None = None, out: np.ndarray | None = None
) -> np.ndarray:
    """Convert raw intensities to float32 in [0, 1].

    Args:
        image: Array of any shape (a strided view is fine); uint16 is divided by 65535, uint8 by 255, floats pass
            through as float32.
        intensity: ``(lo, hi)`` raw values mapped to 0 and 1 instead (the fragment's robust percentiles, see
            `datamodules.reading.intensity`); values beyond are clipped.
        out: A float32 array of the image's shape to write into (a flipped or rotated view is then gathered into
            a C-contiguous tile in the same pass).

    Returns:
        float32 array of the same shape (``out`` when given; else a new array unless the input was float32).

    Raises:
        TypeError: For any other dtype, naming it.
    """
    if intensity is not None:
        lo, hi = intensity
        scale = 1.0 / (hi - lo)
        out = np.multiply(image, np.float32(scale), out=out, dtype=np.float32)  # converts and scales in one pass
        out += np.float32(-lo * scale)
        return np.clip(out, 0.0, 1.0, out=out)
    # Division (not multiplication by a reciprocal) keeps the result exactly source / 65535 rounded once.
    if image.dtype in (np.uint16, np.uint8):
        peak = np.float32(65535.0 if image.dtype == np.uint16 else 255.0)
        return np.divide(image, peak, out=out, dtype=np.float32)
    if np.issubdtype(image.dtype, np.floating):
        if out is not None:
            out[...] = image
            return out
        return image.astype(np.float32, copy=False)
    raise TypeError(f"normalise: unsupported image dtype {image.dtype}; expected uint16, uint8 or a float type")


def _build_pipeline(config: AugmentConfig) -> A.Compose:
    """Albumentations part of the training pipeline; transforms with probability 0 are left out."""
    # Flips and rotations by 90° are not here: `TileTransform` applies them as views before normalising (free).
    geometric: list[A.BasicTransform] = []
    if config.shift_scale_rotate_p > 0:
        geometric.append(
            FastAffine(
                translate_percent=(-config.shift_limit, config.shift_limit),
                scale=(1.0 - config.scale_limit, 1.0 + config.scale_limit),
                rotate=(-config.rotate_limit, config.rotate_limit),
                interpolation=cv2.INTER_LINEAR,
                mask_interpolation=cv2.INTER_NEAREST,
                border_mode=cv2.BORDER_CONSTANT,
                fill=0,
                fill_mask=0,
                p=config.shift_scale_rotate_p,
            )
        )
    photometric: list[A.BasicTransform | A.BaseCompose] = []
    if config.brightness_contrast_p > 0:
        photometric.append(
            FastBrightnessContrast(
                brightness_limit=config.brightness_limit,
                contrast_limit=config.contrast_limit,
                p=config.brightness_contrast_p,
            )
        )
    if config.blur_p > 0:
        # Blur before noise: the scanner blurs, then the detector adds noise.
        # Kernels must be odd; "up to blur_limit" rounds an even limit down.
        blur_limit = (3, config.blur_limit if config.blur_limit % 2 else config.blur_limit - 1)
        photometric.append(
            A.OneOf(
                [
                    FastGaussianBlur(blur_limit=blur_limit, p=1.0),
                    FastMotionBlur(blur_limit=blur_limit, allow_shifted=False, direction_range=(0.0, 0.0), p=1.0),
                ],
                p=config.blur_p,
            )
        )
    if config.noise_p > 0:
        photometric.append(FastGaussNoise(std_range=(0.0, config.noise_std), per_channel=True, p=config.noise_p))
    if config.coarse_dropout_p > 0:
        size = (config.coarse_dropout_size / 4, config.coarse_dropout_size)
        photometric.append(
            A.CoarseDropout(
                num_holes_range=(1, config.coarse_dropout_holes),
                hole_height_range=size,
                hole_width_range=size,
                fill=0,
                fill_mask=None,
                p=config.coarse_dropout_p,
            )
        )
    return A.Compose(geometric + photometric, additional_targets={"valid": "mask"})


class TileTransform:
    """Turn a raw tile with depth margin into the model's input; augments when training.

    Args:
        config: Augmentation settings; ``None`` or ``enabled=False`` means normalisation only.
        num_slices: Number of slices ``D`` the model sees.
        train: Augment (random window, albumentations, slice dropout, reversal) when True; otherwise take the
            centre window and only normalise, deterministically.

    Raises:
        ValueError: If ``num_slices`` is not a positive integer.
    """

    def __init__(self, config: AugmentConfig | None, num_slices: int, *, train: bool) -> None:
        check_int("TileTransform num_slices", num_slices, minimum=1, allow_numpy=True)
        self.config = config
        self.num_slices = int(num_slices)
        self.train = train
        enabled = bool(train and config is not None and config.enabled)
        # `augment`: albumentations here, per tile. With the torch backend the batch is augmented on its device
        # and this transform only draws the depth shift (`shifts`) and normalises.
        self.augment = enabled and config is not None and config.backend == "albumentations"
        self.shifts = enabled and config is not None and config.depth_shift > 0
        self._pipeline = _build_pipeline(config) if self.augment and config is not None else None
        # Reseeded from the caller's rng on every call; one instance avoids allocating a generator per call.
        self._py_random = random.Random(0)

    def __repr__(self) -> str:
        return f"TileTransform(num_slices={self.num_slices}, train={self.train}, augment={self.augment})"

    def depth_offset(self, channels: int, rng: np.random.Generator) -> int:
        """First slice of the model's window among ``channels`` read slices (the window centred in its margin).

        Draws the random depth shift when training with ``depth_shift > 0``, clamped to the margin around the
        centre, so ``depth_shift=0`` means no shift even when a caller hands over a wider margin.
        """
        if self.num_slices > channels:
            raise ValueError(
                f"TileTransform: num_slices={self.num_slices} exceeds the image's slice count C={channels}"
            )
        margin = channels - self.num_slices
        centre = margin // 2
        if not self.shifts:
            return centre
        assert self.config is not None
        low = max(0, centre - self.config.depth_shift)
        high = min(margin, centre + self.config.depth_shift)
        return int(rng.integers(low, high + 1))

    def __call__(
        self,
        image: np.ndarray,
        label: np.ndarray,
        valid: np.ndarray,
        rng: np.random.Generator,
        intensity: tuple[float, float] | None = None,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Transform one tile.

        Args:
            image: ``[H, W, C]`` raw slices (uint16/uint8, or float in [0, 1]) with ``C >= num_slices``; the
                ``C - num_slices`` extra slices are depth margin around the nominal window.
            label: ``[H, W]`` ink, 0/1.
            valid: ``[H, W]`` 1 where the pixel counts, 0/1.
            rng: Source of all randomness, so the same generator state gives the same output in any worker.
            intensity: The fragment's ``(lo, hi)`` normalisation range (see `normalise`); None: the dtype's.

        Returns:
            ``(image [H, W, num_slices], label [H, W], valid [H, W])``, float32 and C-contiguous.

        Raises:
            ValueError: On wrong shapes, ``num_slices > C``, or a non-square tile with rotate90_p > 0.
            TypeError: On an unsupported image dtype.
        """
        if image.ndim != 3:
            raise ValueError(f"TileTransform: image must be [H, W, C], got shape {image.shape}")
        height, width, channels = image.shape
        for name, array in (("label", label), ("valid", valid)):
            if array.shape != (height, width):
                raise ValueError(
                    f"TileTransform: {name} shape {array.shape} does not match image [H, W] {(height, width)}"
                )
        if self.num_slices > channels:
            raise ValueError(
                f"TileTransform: num_slices={self.num_slices} exceeds the image's slice count C={channels}"
            )
        if not self.augment:
            offset = self.depth_offset(channels, rng)
            window = image[:, :, offset : offset + self.num_slices]
            return (
                np.ascontiguousarray(normalise(window, intensity)),
                np.ascontiguousarray(label, dtype=np.float32),
                np.ascontiguousarray(valid, dtype=np.float32),
            )
        assert self.config is not None and self._pipeline is not None
        return self._augment(image, label, valid, rng, intensity)

    def _flip_rotate(
        self, image: np.ndarray, label: np.ndarray, valid: np.ndarray, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Horizontal flip, vertical flip (each with ``flip_p``), then ``rotate90_p`` a rotation by k × 90°, k
        uniform in 0..3 (albumentations' HorizontalFlip, VerticalFlip, RandomRotate90), as views of the inputs.

        As views they cost nothing: the pixels move once, when the tile is normalised. Run by albumentations, each
        would copy the whole tile (its outputs are made contiguous after every transform).
        """
        config = self.config
        assert config is not None
        arrays = [image, label, valid]
        if config.flip_p > 0 and rng.random() < config.flip_p:
            arrays = [a[:, ::-1] for a in arrays]
        if config.flip_p > 0 and rng.random() < config.flip_p:
            arrays = [a[::-1] for a in arrays]
        if config.rotate90_p > 0 and rng.random() < config.rotate90_p:
            k = int(rng.integers(0, 4))
            arrays = [np.rot90(a, k) for a in arrays]
        return arrays[0], arrays[1], arrays[2]

    def _augment(
        self,
        image: np.ndarray,
        label: np.ndarray,
        valid: np.ndarray,
        rng: np.random.Generator,
        intensity: tuple[float, float] | None,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        config = self.config
        assert config is not None and self._pipeline is not None
        if config.rotate90_p > 0 and image.shape[0] != image.shape[1]:
            raise ValueError(
                f"TileTransform: AugmentConfig.rotate90_p > 0 needs square tiles, got H, W = {image.shape[:2]}"
            )
        offset = self.depth_offset(image.shape[2], rng)
        raw, label, valid = self._flip_rotate(image[:, :, offset : offset + self.num_slices], label, valid, rng)
        # One pass: the flipped/rotated view is gathered, converted and scaled into a new contiguous tile.
        window = normalise(raw, intensity, out=np.empty(raw.shape, dtype=np.float32))

        # Albumentations draws from the caller's generator directly (plus a python Random reseeded from it):
        # cheaper than set_random_seed, which builds two fresh generators for every transform on every call.
        self._py_random.seed(int(rng.integers(2**63)))
        self._pipeline.set_random_state(rng, self._py_random)
        out = self._pipeline(
            image=window,
            mask=np.ascontiguousarray(label, dtype=np.float32),
            valid=np.ascontiguousarray(valid, dtype=np.float32),
        )
        image_out, label_out, valid_out = out["image"], out["mask"], out["valid"]

        if config.slice_dropout_p > 0 and rng.random() < config.slice_dropout_p:
            count = int(rng.integers(1, min(config.slice_dropout_max, self.num_slices) + 1))
            dropped = rng.choice(self.num_slices, size=count, replace=False)
            if not image_out.flags.writeable:
                image_out = image_out.copy()
            image_out[:, :, dropped] = 0.0
        if config.depth_reverse_p > 0 and rng.random() < config.depth_reverse_p:
            image_out = image_out[:, :, ::-1]
        return (
            np.ascontiguousarray(image_out, dtype=np.float32),
            np.ascontiguousarray(label_out, dtype=np.float32),
            np.ascontiguousarray(valid_out, dtype=np.float32),
        )
