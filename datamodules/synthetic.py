"""Synthetic papyrus fragments in the real on-disk layout, for tests, demos and benchmarks.

A fragment is a papyrus sheet lying in the volume at a surface depth ``z_s(y, x)`` that wobbles smoothly
across the fragment. The sheet has fibre texture (horizontal and vertical streaks); letter-like ink strokes
lie on its surface and change the intensity only faintly, and only in the 2-3 slices at ``z_s``. Because the
surface wobbles and the ink is weaker than the per-pixel noise, no single slice thresholded globally finds
the ink (see :func:`best_single_slice_f05`), while a model that follows the surface over depth and pools over
space can.

Generation never holds the volume: the 2-D fields (surface depth, sheet brightness, ink, mask) are built
once, in row bands from small random grids, and every slice is computed from them and written on its own.
Every file is written under a temporary name in its folder and renamed when complete, so a crash never
leaves a file that looks whole.
"""

from __future__ import annotations

import math
import os
import re
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import tifffile
from PIL import Image

# Intensities in units of the dtype's full range (1.0 = 65535 for uint16, 255 for uint8).
_BACKGROUND = 0.14  # air around the sheet
_SHEET_CONTRAST = 0.40  # sheet interior minus air
_FIBRE_AMPLITUDE = 0.10  # relative brightness modulation of the sheet by fibres
_INK_CONTRAST = 0.022  # 5.5 % of the sheet contrast: equal to the per-pixel noise
_NOISE_SIGMA = 0.022

# Depths in slices, for the default 65-slice volume; other depths scale them.
_REFERENCE_DEPTH = 65
_SURFACE_CENTRE = 30.0  # keeps the ink inside the usual slice range 15..44
_SURFACE_WOBBLE = 6.0  # largest departure of z_s from its centre
_SHEET_THICKNESS = 6.0
_EDGE_SOFTNESS = 0.8  # width of the sheet's faces, in slices
_INK_OFFSET = 0.5  # the ink peaks half a slice under the surface
_INK_SPREAD = 0.7  # Gaussian sigma of the ink over depth: 2-3 slices carry it

_BAND_ROWS = 256  # row band for fields and slices; also keys the noise, so changing it changes the output
_LUT_STEPS = 32  # depth profile lookup table resolution, per slice
_COMPRESSIONS = (None, "lzw", "zlib")
_DTYPES = ("uint8", "uint16")
_TILE = (64, 64)
_SLICE_DIRS = ("surface_volume", "layers")
_PNG_NAMES = ("ir.png", "inklabels.png", "mask.png")  # written in this order, after the slices
_TEMP_SUFFIX = ".partial"

# Separate random streams per component, so that e.g. the mask does not change when the ink does.
_STREAM_SURFACE, _STREAM_FIBRES, _STREAM_MASK, _STREAM_INK, _STREAM_NOISE, _STREAM_REALISM = range(1, 7)


@dataclass(frozen=True)
class Realism:
    """What makes real ink hard, each off by default (the clean demo) and each a knob.

    Attributes:
        ink_presence: fraction of each labelled stroke's pixels that carry ink, in (0, 1]; the rest of the
            stroke is bare papyrus in blobs a few stroke widths long (real ink is patchy).
        label_dilation: labels are the strokes grown by this many pixels (real labels are drawn loosely).
        thickness_variation: the sheet's thickness varies by up to this fraction around its mean, in [0, 0.9].
        ink_displacement: ink lifts the papyrus surface by this many slices (ink has a thickness of its own).
    """

    ink_presence: float = 1.0
    label_dilation: int = 0
    thickness_variation: float = 0.0
    ink_displacement: float = 0.0

    def __post_init__(self) -> None:
        if not 0.0 < self.ink_presence <= 1.0:
            raise ValueError(f"Realism.ink_presence must be in (0, 1], got {self.ink_presence!r}")
        if isinstance(self.label_dilation, bool) or not isinstance(self.label_dilation, int) or self.label_dilation < 0:
            raise ValueError(f"Realism.label_dilation must be an integer >= 0, got {self.label_dilation!r}")
        if not 0.0 <= self.thickness_variation <= 0.9:
            raise ValueError(f"Realism.thickness_variation must be in [0, 0.9], got {self.thickness_variation!r}")
        if not 0.0 <= self.ink_displacement <= 3.0:
            raise ValueError(f"Realism.ink_displacement must be in [0, 3] slices, got {self.ink_displacement!r}")


# The regime real fragments are in: ink at 0.7x the per-voxel noise, present in three quarters of each stroke,
# labels a pixel wider than the ink, a sheet whose thickness varies by 40 %, ink lifting the surface half a slice.
FAINT_INK_CONTRAST = 0.7 * _NOISE_SIGMA
FAINT_REALISM = Realism(ink_presence=0.75, label_dilation=1, thickness_variation=0.4, ink_displacement=0.5)


def slice_name(index: int, depth: int) -> str:
    """File name of slice ``index`` in a volume of ``depth`` slices: 2-digit zero-padded, 3 digits past 100."""
    return f"{index:0{max(2, len(str(depth - 1)))}d}.tif"


def make_fragment(
    root: str | Path,
    height: int,
    width: int,
    *,
    depth: int = 65,
    seed: int = 0,
    layers_dirname: str = "surface_volume",
    dtype: str = "uint16",
    compression: str | None = None,
    tiled: bool = False,
    reverse_depth: bool = False,
    with_labels: bool = True,
    with_mask: bool = True,
    surface_z: float | None = None,
    ink_contrast: float = _INK_CONTRAST,
    realism: Realism | None = None,
) -> Path:
    """Writes one synthetic fragment folder at ``root`` (``root`` IS the fragment folder) and returns it.

    Layout: ``<root>/<layers_dirname>/00.tif …`` (``depth`` 2-D slices), then ``ir.png``, ``inklabels.png``
    (0/255) and ``mask.png`` (0/255), last, so that a folder holding ``mask.png`` and all slices is complete.
    Rewriting a folder first removes its PNGs, stale numbered slices and temporary files.

    Args:
        root: the fragment folder to write; created if missing.
        height: image height in pixels.
        width: image width in pixels.
        depth: number of slices.
        seed: random seed; the same arguments always give the same bytes.
        layers_dirname: slice folder name (``surface_volume`` for fragments, ``layers`` for segments).
        dtype: ``"uint16"`` or ``"uint8"``.
        compression: ``None``, ``"lzw"`` or ``"zlib"``.
        tiled: write 64x64-tiled TIFFs instead of strips.
        reverse_depth: store the slices in reversed depth order (file 0 holds the deepest slice).
        with_labels: write ``inklabels.png``.
        with_mask: write ``mask.png`` and give the papyrus irregular margins; without it the sheet covers the
            whole frame, as a missing mask means "all valid".
        surface_z: mean surface depth in slices; default 30 for 65 slices, scaled with ``depth``.
        ink_contrast: ink's brightness at its peak, as a fraction of the dtype's range (default 0.022: equal
            to the per-pixel noise; the demo uses more so a CPU run learns within minutes).
        realism: patchy ink, loose labels, varying sheet thickness, ink that displaces the surface (see
            `Realism`); None: none of these (clean strokes, exact labels, a sheet of constant thickness).

    Returns:
        The fragment folder.

    Raises:
        ValueError: a size, seed, dtype, compression, folder name or surface depth is invalid, or ``root``
            already holds the other kind of slice folder.
    """
    _check_args(height, width, depth, seed, dtype, compression, layers_dirname, surface_z)
    if not 0.0 <= ink_contrast <= 0.5:
        raise ValueError(f"ink_contrast must be in [0, 0.5], got {ink_contrast!r}")
    root = Path(root)
    volume_dir = root / layers_dirname
    for other in _SLICE_DIRS:
        if other != layers_dirname and (root / other).is_dir():
            raise ValueError(
                f"'{root}' already holds a {other}/ slice folder; writing {layers_dirname}/ beside it would leave "
                "two volumes in one fragment: use an empty folder"
            )
    volume_dir.mkdir(parents=True, exist_ok=True)
    # The PNGs go first and come back last, so a folder holding mask.png never mixes old and new slices.
    for name in _PNG_NAMES:
        (root / name).unlink(missing_ok=True)
    _remove_stale(volume_dir, depth)

    realism = realism or Realism()
    zs, amplitude, strokes, mask = _build_fields(height, width, depth, seed, surface_z, with_mask)
    ink, labels, thickness = _apply_realism(realism, strokes, mask, zs, depth, seed)
    scale = float(np.iinfo(np.dtype(dtype)).max)
    profile = _DepthProfiles(depth, scale, ink_contrast)
    slice_buf = np.empty((height, width), dtype=dtype)
    for file_index in range(depth):
        z = depth - 1 - file_index if reverse_depth else file_index
        for band, (y0, y1) in enumerate(_bands(height)):
            noise = np.random.default_rng([seed, _STREAM_NOISE, z, band]).standard_normal(
                (y1 - y0, width), dtype=np.float32
            )
            band_thickness = None if thickness is None else thickness[y0:y1]
            values = profile.slice_band(z, zs[y0:y1], amplitude[y0:y1], ink[y0:y1], noise, band_thickness)
            slice_buf[y0:y1] = np.clip(values, 0.0, scale, out=values)
        _write_tiff(volume_dir / slice_name(file_index, depth), slice_buf, compression, tiled)
    del slice_buf

    _write_png(root / "ir.png", _infrared(amplitude, ink, mask))
    if with_labels:
        _write_png(root / "inklabels.png", (labels & mask).astype(np.uint8) * 255)
    if with_mask:
        _write_png(root / "mask.png", mask.astype(np.uint8) * 255)
    return root


def make_demo_data(
    data_dir: str | Path,
    *,
    num_fragments: int = 2,
    height: int = 384,
    width: int = 384,
    depth: int = 65,
    seed: int = 0,
    ink_contrast: float = _INK_CONTRAST,
    realism: Realism | None = None,
) -> list[Path]:
    """Writes fragments ``frag1``, ``frag2``, … under ``data_dir``, skipping those already complete.

    Fragment ``i`` (1-based) uses seed ``seed + i - 1``. A fragment counts as complete when all its slices,
    ``ir.png``, ``inklabels.png`` and ``mask.png`` exist and the mask has the requested size; an incomplete
    one (e.g. from a crashed run) is written again.

    Args:
        data_dir: folder to hold the fragments; created if missing.
        num_fragments: how many fragments.
        height: image height of each fragment.
        width: image width of each fragment.
        depth: slices per fragment.
        seed: seed of the first fragment.
        ink_contrast: see `make_fragment`.
        realism: see `make_fragment`.

    Returns:
        The fragment folders, in order.

    Raises:
        ValueError: ``num_fragments`` < 1 or an invalid size or seed.
    """
    if isinstance(num_fragments, bool) or not isinstance(num_fragments, int) or num_fragments < 1:
        raise ValueError(f"num_fragments must be an integer >= 1, got {num_fragments!r}")
    data_dir = Path(data_dir)
    if data_dir.exists() and not data_dir.is_dir():
        raise ValueError(f"data_dir '{data_dir}' exists and is not a folder")
    paths = []
    for i in range(1, num_fragments + 1):
        path = data_dir / f"frag{i}"
        if not _is_complete(path, height, width, depth):
            make_fragment(
                path, height, width, depth=depth, seed=seed + i - 1, ink_contrast=ink_contrast, realism=realism
            )
        paths.append(path)
    return paths


def surface_depth(
    height: int, width: int, *, depth: int = 65, seed: int = 0, surface_z: float | None = None
) -> np.ndarray:
    """The sheet's surface depth ``z_s(y, x)`` (float32 slices) that :func:`make_fragment` uses for these arguments.

    Lets tests build an oracle that knows where the surface is. With ``reverse_depth=True`` the file index of
    depth ``z`` is ``depth - 1 - z``.
    """
    _check_args(height, width, depth, seed, "uint16", None, "surface_volume", surface_z)
    field = _SmoothField.surface(height, width, depth, seed, surface_z)
    return np.concatenate([field.band(y0, y1) for y0, y1 in _bands(height)])


def best_single_slice_f05(fragment_dir: str | Path, z_range: tuple[int, int] | None = None) -> float:
    """Best F0.5 that one slice and one global threshold reach inside the mask: the trivial baseline's bound.

    Every slice in ``z_range`` (file indices ``[start, end)``; default all) is read on its own, and every
    threshold is tried in both polarities (ink brighter than it, or darker). Integer slices are swept exactly
    over all their values; float slices over 4096 levels.

    Args:
        fragment_dir: a fragment folder with ``surface_volume/`` or ``layers/``, ``inklabels.png`` and
            optionally ``mask.png``.
        z_range: ``(start, end)`` file indices of the slices to try.

    Returns:
        The best F0.5 (beta = 0.5), 0.0 when the mask holds no ink.

    Raises:
        FileNotFoundError: no slice folder, no numbered slices or no ``inklabels.png``.
        ValueError: an invalid ``z_range`` or images whose sizes disagree.
    """
    fragment_dir = Path(fragment_dir)
    volume_dir = next((fragment_dir / n for n in _SLICE_DIRS if (fragment_dir / n).is_dir()), None)
    if volume_dir is None:
        raise FileNotFoundError(f"'{fragment_dir}' holds no surface_volume/ or layers/ folder")
    slices = sorted(
        (p for p in volume_dir.iterdir() if re.fullmatch(r"\d+\.tiff?", p.name, re.IGNORECASE)),
        key=lambda p: int(p.name.split(".")[0]),
    )
    if not slices:
        raise FileNotFoundError(f"no numbered .tif slice in '{volume_dir}'")
    start, end = (0, len(slices)) if z_range is None else z_range
    if not 0 <= start < end <= len(slices):
        raise ValueError(
            f"z_range {z_range} is not a non-empty range inside the {len(slices)} slices of '{volume_dir}'"
        )
    labels_path = fragment_dir / "inklabels.png"
    if not labels_path.is_file():
        raise FileNotFoundError(f"'{labels_path}' not found: the bound needs ink labels")
    labels = _read_binary(labels_path)
    mask_path = fragment_dir / "mask.png"
    mask = _read_binary(mask_path) if mask_path.is_file() else np.ones_like(labels)
    if mask.shape != labels.shape:
        raise ValueError(f"'{mask_path}' is {mask.shape} but '{labels_path}' is {labels.shape}")
    positives = int(np.count_nonzero(labels & mask))
    if positives == 0:
        return 0.0
    best = 0.0
    for path in slices[start:end]:
        image = tifffile.imread(path)
        if image.shape != labels.shape:
            raise ValueError(f"slice '{path}' is {image.shape} but '{labels_path}' is {labels.shape}")
        pos, neg = _level_histograms(image, mask, labels)
        for ordered_pos, ordered_neg in ((pos[::-1], neg[::-1]), (pos, neg)):  # ink brighter, then darker
            tp = np.cumsum(ordered_pos)
            fp = np.cumsum(ordered_neg)
            # F_beta = (1 + b^2) TP / ((1 + b^2) TP + b^2 FN + FP), with b = 0.5
            f05 = 1.25 * tp / (1.25 * tp + 0.25 * (positives - tp) + fp)
            best = max(best, float(f05.max()))
    return best


# --- argument checks and file handling --------------------------------------------------------------------


def _check_args(
    height: int,
    width: int,
    depth: int,
    seed: int,
    dtype: str,
    compression: str | None,
    layers_dirname: str,
    surface_z: float | None,
) -> None:
    for name, value, minimum in (("height", height, 8), ("width", width, 8), ("depth", depth, 1)):
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
            raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    if dtype not in _DTYPES:
        raise ValueError(f"dtype must be one of {_DTYPES}, got {dtype!r}")
    if compression not in _COMPRESSIONS:
        raise ValueError(f"compression must be one of {_COMPRESSIONS}, got {compression!r}")
    if not layers_dirname or Path(layers_dirname).name != layers_dirname or layers_dirname in (".", ".."):
        raise ValueError(f"layers_dirname must be a plain folder name, got {layers_dirname!r}")
    if surface_z is not None and not (
        isinstance(surface_z, int | float) and math.isfinite(surface_z) and 0 <= surface_z <= depth - 1
    ):
        raise ValueError(f"surface_z must lie in [0, depth - 1] = [0, {depth - 1}], got {surface_z!r}")


def _remove_stale(volume_dir: Path, depth: int) -> None:
    """Removes temporary files and numbered slices that this depth does not write."""
    keep = {slice_name(i, depth) for i in range(depth)}
    for path in volume_dir.iterdir():
        stale_slice = re.fullmatch(r"\d+\.tiff?", path.name, re.IGNORECASE) and path.name not in keep
        if path.is_file() and (stale_slice or path.name.endswith(_TEMP_SUFFIX)):
            path.unlink()


def _is_complete(path: Path, height: int, width: int, depth: int) -> bool:
    volume_dir = path / "surface_volume"
    names = [volume_dir / slice_name(i, depth) for i in range(depth)] + [path / n for n in _PNG_NAMES]
    if not all(p.is_file() for p in names):
        return False
    try:
        with Image.open(path / "mask.png") as img:
            return img.size == (width, height)
    except Exception:
        return False


@contextmanager
def _atomic_path(final: Path) -> Iterator[Path]:
    """Yields a temporary path beside ``final``; renames it to ``final`` on success, removes it on error."""
    temp = final.with_name(f".{final.name}.{uuid.uuid4().hex[:8]}{_TEMP_SUFFIX}")
    try:
        yield temp
        os.replace(temp, final)
    finally:
        if temp.exists():
            temp.unlink()


def _write_tiff(path: Path, image: np.ndarray, compression: str | None, tiled: bool) -> None:
    with _atomic_path(path) as temp, open(temp, "wb") as handle:
        tifffile.imwrite(
            handle,
            image,
            photometric="minisblack",
            compression=compression,
            tile=_TILE if tiled else None,
            metadata=None,
        )


def _write_png(path: Path, image: np.ndarray) -> None:
    with _atomic_path(path) as temp:
        Image.fromarray(image).save(temp, format="PNG")


def _read_binary(path: Path) -> np.ndarray:
    with Image.open(path) as img:
        array = np.asarray(img)
    if array.ndim == 3:
        array = array[..., 0]
    return array > 0


def _level_histograms(image: np.ndarray, mask: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Histograms of ink and non-ink levels inside the mask, built in row bands to bound memory.

    uint8/uint16 images keep every value as a level (an exact threshold sweep); others get 4096 bins.
    """
    if image.dtype in (np.uint8, np.uint16):
        num_levels = 1 << (8 * image.dtype.itemsize)

        def to_levels(values: np.ndarray) -> np.ndarray:
            return values

    else:
        low = float(np.min(image, where=mask, initial=np.inf))
        high = float(np.max(image, where=mask, initial=-np.inf))
        span = high - low if high > low else 1.0
        num_levels = 4096

        def to_levels(values: np.ndarray) -> np.ndarray:
            return np.clip((values.astype(np.float64) - low) / span * num_levels, 0, num_levels - 1).astype(np.intp)

    pos = np.zeros(num_levels, dtype=np.int64)
    neg = np.zeros(num_levels, dtype=np.int64)
    for y0 in range(0, image.shape[0], 4 * _BAND_ROWS):
        inside = mask[y0 : y0 + 4 * _BAND_ROWS]
        levels = to_levels(image[y0 : y0 + 4 * _BAND_ROWS][inside])
        truth = labels[y0 : y0 + 4 * _BAND_ROWS][inside]
        pos += np.bincount(levels[truth], minlength=num_levels)
        neg += np.bincount(levels[~truth], minlength=num_levels)
    return pos, neg


# --- the physics ------------------------------------------------------------------------------------------


def _bands(height: int) -> Iterator[tuple[int, int]]:
    for y0 in range(0, height, _BAND_ROWS):
        yield y0, min(y0 + _BAND_ROWS, height)


class _SmoothField:
    """Value noise: a small random grid, upsampled band by band with smoothstep interpolation.

    ``step_y``/``step_x`` are the grid spacings in pixels; unequal spacings give streaks (fibres).
    """

    def __init__(self, grid: np.ndarray, step_y: float, step_x: float, width: int) -> None:
        self.grid = grid.astype(np.float32)
        self.step_y = step_y
        self.step_x = step_x
        xs = np.arange(width, dtype=np.float64) / step_x
        self._x0 = np.floor(xs).astype(np.int64)
        self._fx = _smoothstep(xs - self._x0).astype(np.float32)

    @classmethod
    def random(cls, rng: np.random.Generator, height: int, width: int, step_y: float, step_x: float) -> _SmoothField:
        shape = (int((height - 1) / step_y) + 2, int((width - 1) / step_x) + 2)
        return cls(rng.standard_normal(shape), step_y, step_x, width)

    @classmethod
    def surface(cls, height: int, width: int, depth: int, seed: int, surface_z: float | None) -> _SmoothField:
        """z_s: a centre depth plus two octaves of value noise, bounded by the wobble amplitude."""
        rng = np.random.default_rng([seed, _STREAM_SURFACE])
        scale = depth / _REFERENCE_DEPTH
        centre = _SURFACE_CENTRE * scale if surface_z is None else surface_z
        wobble = _SURFACE_WOBBLE * scale
        step = max(12.0, max(height, width) / 8)  # grid of the fine octave; the coarse one is twice as wide
        fine = cls.random(rng, height, width, step, step).grid
        coarse = rng.standard_normal(((fine.shape[0] + 1) // 2 + 1, (fine.shape[1] + 1) // 2 + 1))
        # The coarse octave, linearly interpolated onto the fine grid's nodes.
        coarse = np.repeat(np.repeat(coarse, 2, 0), 2, 1)[: fine.shape[0] + 1, : fine.shape[1] + 1]
        coarse = (coarse[:-1, :-1] + coarse[1:, :-1] + coarse[:-1, 1:] + coarse[1:, 1:]) / 4
        grid = coarse / np.abs(coarse).max() + 0.5 * fine / np.abs(fine).max()
        # Interpolation never leaves the grid's range, so max-abs normalisation bounds the wobble exactly.
        grid = centre + wobble * grid / np.abs(grid).max()
        return cls(grid, step, step, width)

    def band(self, y0: int, y1: int) -> np.ndarray:
        ys = np.arange(y0, y1, dtype=np.float64) / self.step_y
        iy = np.floor(ys).astype(np.int64)
        fy = _smoothstep(ys - iy).astype(np.float32)[:, None]
        rows = self.grid[iy] * (1 - fy) + self.grid[iy + 1] * fy
        return rows[:, self._x0] * (1 - self._fx) + rows[:, self._x0 + 1] * self._fx


def _smoothstep(t: np.ndarray) -> np.ndarray:
    return t * t * (3 - 2 * t)


def _build_fields(
    height: int, width: int, depth: int, seed: int, surface_z: float | None, with_mask: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Full-size 2-D fields: surface depth (float32), sheet contrast (float16), ink (bool), mask (bool).

    About 8 bytes a pixel (512 MB for 8192 x 8192); band temporaries add a few tens of MB.
    """
    surface = _SmoothField.surface(height, width, depth, seed, surface_z)
    rng = np.random.default_rng([seed, _STREAM_FIBRES])
    fibre = max(1.5, min(height, width) / 256)  # fibre width grows a little with the fragment
    horizontal = _SmoothField.random(rng, height, width, fibre, 16 * fibre)
    vertical = _SmoothField.random(rng, height, width, 16 * fibre, fibre)
    patches = _SmoothField.random(rng, height, width, max(16.0, height / 6), max(16.0, width / 6))
    rng = np.random.default_rng([seed, _STREAM_MASK])
    outline = _SmoothField.random(rng, height, width, max(16.0, height / 5), max(16.0, width / 5))
    cx, cy = (width - 1) / 2, (height - 1) / 2
    xx = ((np.arange(width, dtype=np.float32) - cx) / (0.47 * width)) ** 2

    zs = np.empty((height, width), dtype=np.float32)
    amplitude = np.empty((height, width), dtype=np.float16)
    mask = np.empty((height, width), dtype=bool)
    for y0, y1 in _bands(height):
        zs[y0:y1] = surface.band(y0, y1)
        texture = 1 + _FIBRE_AMPLITUDE * (
            0.7 * horizontal.band(y0, y1) + 0.7 * vertical.band(y0, y1) + 0.4 * patches.band(y0, y1)
        )
        np.clip(texture, 0.5, 1.5, out=texture)
        if with_mask:
            yy = ((np.arange(y0, y1, dtype=np.float32) - cy) / (0.47 * height))[:, None] ** 2
            mask[y0:y1] = yy + xx + 0.15 * outline.band(y0, y1) < 1
        else:
            mask[y0:y1] = True
        amplitude[y0:y1] = _SHEET_CONTRAST * texture * mask[y0:y1]
    ink = _render_ink(height, width, np.random.default_rng([seed, _STREAM_INK]))
    ink &= mask
    return zs, amplitude, ink, mask


def _apply_realism(
    realism: Realism, strokes: np.ndarray, mask: np.ndarray, zs: np.ndarray, depth: int, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Ink that is actually there, the labels, and the sheet thickness map (None: constant).

    Lifts the surface ``zs`` (in place) under the ink by ``ink_displacement`` slices.
    """
    rng = np.random.default_rng([seed, _STREAM_REALISM])
    height, width = strokes.shape
    ink = strokes & mask
    if realism.ink_presence < 1.0 and ink.any():
        step = 12.0  # patches of a few stroke widths
        patches = np.concatenate(
            [_SmoothField.random(rng, height, width, step, step).band(y0, y1) for y0, y1 in _bands(height)]
        )
        cut = np.quantile(patches[ink], realism.ink_presence)
        ink &= patches <= cut
    labels = strokes & mask
    if realism.label_dilation > 0:
        size = 2 * realism.label_dilation + 1
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (size, size))
        labels = cv2.dilate(labels.astype(np.uint8), kernel).astype(bool) & mask
    if realism.ink_displacement > 0:
        zs -= np.float32(realism.ink_displacement) * ink
    thickness = None
    if realism.thickness_variation > 0:
        mean = max(2.0, _SHEET_THICKNESS * depth / _REFERENCE_DEPTH)
        field = _SmoothField.random(rng, height, width, max(16.0, height / 4), max(16.0, width / 4))
        grid = field.grid / np.abs(field.grid).max()
        field.grid = (mean * (1 + realism.thickness_variation * grid)).astype(np.float32)
        thickness = np.concatenate([field.band(y0, y1) for y0, y1 in _bands(height)])
    return ink, labels, thickness


class _DepthProfiles:
    """Sheet and ink profiles over depth offset ``z - z_s``, tabulated so a slice costs a lookup.

    Values come out in dtype units (``scale`` = the dtype's maximum), offset by 0.5 so truncation rounds.
    """

    def __init__(self, depth: int, scale: float, ink_contrast: float = _INK_CONTRAST) -> None:
        self._scale = scale
        thickness = max(2.0, _SHEET_THICKNESS * depth / _REFERENCE_DEPTH)
        self._low = -float(depth) - 2
        offsets = np.arange(self._low, depth + 2, 1 / _LUT_STEPS, dtype=np.float64)
        sigmoid = lambda t: 1 / (1 + np.exp(-t))  # noqa: E731
        front = sigmoid(offsets / _EDGE_SOFTNESS)
        sheet = front * sigmoid((thickness - offsets) / _EDGE_SOFTNESS)
        self.sheet = (scale * sheet).astype(np.float32)  # times the sheet contrast map (in intensity units)
        self.face = front.astype(np.float32)  # one face of the sheet, for a thickness that varies per pixel
        ink = ink_contrast * np.exp(-0.5 * ((offsets - _INK_OFFSET) / _INK_SPREAD) ** 2)
        self.ink = (scale * ink).astype(np.float32)

    def slice_band(
        self,
        z: int,
        zs: np.ndarray,
        amplitude: np.ndarray,
        ink: np.ndarray,
        noise: np.ndarray,
        thickness: np.ndarray | None = None,
    ) -> np.ndarray:
        index = ((z - zs - self._low) * _LUT_STEPS + 0.5).astype(np.int32)
        if thickness is None:
            values = self.sheet[index] * amplitude
        else:  # front face times back face: sigmoid(o / e) * sigmoid((t - o) / e)
            back = ((thickness - (z - zs) - self._low) * _LUT_STEPS + 0.5).astype(np.int32)
            np.clip(back, 0, len(self.face) - 1, out=back)
            values = self.face[index] * self.face[back] * (self._scale * amplitude.astype(np.float32))
        values += self.ink[index] * ink
        noise *= _NOISE_SIGMA * self._scale
        values += noise
        values += _BACKGROUND * self._scale + 0.5
        return values


def _infrared(amplitude: np.ndarray, ink: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """A grey infrared-like photo: papyrus tone from the sheet texture, ink clearly darker, background black."""
    ir = np.empty(mask.shape, dtype=np.uint8)
    for y0, y1 in _bands(mask.shape[0]):
        tone = amplitude[y0:y1].astype(np.float32) / _SHEET_CONTRAST * 150 - 40 * ink[y0:y1]
        ir[y0:y1] = np.clip(tone, 0, 255) * mask[y0:y1]
    return ir


# --- ink: rows of letter-like strokes ---------------------------------------------------------------------

_Stroke = np.ndarray  # (N, 2) polyline in glyph units: x in [0, 0.7], y in [0, 1] (down)


def _glyph_alphabet(rng: np.random.Generator, size: int = 24) -> list[list[_Stroke]]:
    """Random glyphs made of 2-3 primitives: bars, diagonals and arcs."""
    primitives: list[Callable[[], _Stroke]] = [
        lambda: np.array([[rng.choice([0.08, 0.35, 0.62]), 0.0], [rng.choice([0.08, 0.35, 0.62]), 1.0]]),
        lambda: np.array([[0.05, rng.choice([0.05, 0.5, 0.95])], [0.65, rng.choice([0.05, 0.5, 0.95])]]),
        lambda: np.array([[0.05, 1.0], [0.65, 0.0]]) if rng.random() < 0.5 else np.array([[0.05, 0.0], [0.65, 1.0]]),
        lambda: _arc(rng),
    ]
    alphabet = []
    for _ in range(size):
        count = int(rng.integers(2, 4))
        alphabet.append([primitives[int(rng.integers(len(primitives)))]() for _ in range(count)])
    return alphabet


def _arc(rng: np.random.Generator) -> _Stroke:
    start = rng.uniform(0, 2 * np.pi)
    angles = start + np.linspace(0, rng.uniform(np.pi, 2 * np.pi), 9)
    cy = rng.choice([0.3, 0.5, 0.7])
    radius = 0.3 if cy == 0.5 else 0.22
    return np.stack([0.35 + radius * np.cos(angles), cy + radius * np.sin(angles)], axis=1)


def _render_ink(height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """Lines of text: words of 2-7 letters, each letter a jittered glyph drawn with round-capped strokes."""
    ink = np.zeros((height, width), dtype=bool)
    letter = float(np.clip(min(height, width) / 10, 14, 45))
    thickness = float(np.clip(round(letter / 9), 2, 5))
    alphabet = _glyph_alphabet(rng)
    margin = 0.5 * letter
    y = margin + rng.uniform(0, letter)
    while y + letter < height:
        x = margin + rng.uniform(0, 2 * letter)
        line_end = width - margin - rng.uniform(0, 0.2 * width)
        if rng.random() < 0.12:  # paragraph break: an empty line
            y += 1.5 * letter
            continue
        while x + 0.7 * letter < line_end:
            for _ in range(int(rng.integers(2, 8))):
                if x + 0.7 * letter >= line_end:
                    break
                size = letter * rng.uniform(0.85, 1.1)
                slant = rng.uniform(-0.2, 0.2)
                origin = (x + rng.normal(0, 0.04 * letter), y + rng.normal(0, 0.06 * letter))
                strokes = alphabet[int(rng.integers(len(alphabet)))]
                _draw_letter(ink, strokes, origin, size, slant, thickness)
                x += size * rng.uniform(0.85, 1.0)
            x += letter * rng.uniform(0.5, 0.9)  # word gap
        y += 1.5 * letter * rng.uniform(0.95, 1.1)
    return ink


def _draw_letter(
    ink: np.ndarray, strokes: list[_Stroke], origin: tuple[float, float], size: float, slant: float, thickness: float
) -> None:
    points = [
        np.stack([origin[0] + size * (s[:, 0] + slant * (1 - s[:, 1])), origin[1] + size * s[:, 1]], 1) for s in strokes
    ]
    stacked = np.concatenate(points)
    pad = thickness
    x0, y0 = (np.floor(stacked.min(0) - pad)).astype(int)
    x1, y1 = (np.ceil(stacked.max(0) + pad)).astype(int) + 1
    x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, ink.shape[1]), min(y1, ink.shape[0])
    if x0 >= x1 or y0 >= y1:
        return
    px = np.arange(x0, x1, dtype=np.float32)[None, :]
    py = np.arange(y0, y1, dtype=np.float32)[:, None]
    radius2 = (thickness / 2) ** 2
    box = ink[y0:y1, x0:x1]
    for polyline in points:
        for (ax, ay), (bx, by) in zip(polyline[:-1], polyline[1:], strict=True):
            vx, vy = bx - ax, by - ay
            length2 = max(vx * vx + vy * vy, 1e-6)
            t = np.clip(((px - ax) * vx + (py - ay) * vy) / length2, 0, 1)
            box |= (px - ax - t * vx) ** 2 + (py - ay - t * vy) ** 2 <= radius2
