"""The pictures the callbacks draw: Grad-CAM overlays, depth-profile charts and prediction-beside-label images.

Plain numpy and Pillow (matplotlib is not a dependency of the project), apart from the callbacks so the
pictures can be drawn from a script or a test without a Trainer. Every image is an ``uint8`` array, RGB
``[H, W, 3]`` or grey ``[H, W]``: the layouts both Pillow and ``SummaryWriter.add_image`` (``dataformats="HWC"``
or ``"HW"``) take.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

# Anchors of the classic "jet" map (dark blue → cyan → yellow → dark red), the usual Grad-CAM palette.
_JET = np.array(
    [[0.0, 0.0, 0.5], [0.0, 0.0, 1.0], [0.0, 1.0, 1.0], [1.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.5, 0.0, 0.0]],
    dtype=np.float32,
)
OUTLINE_RGB = (0, 255, 0)
_BAR_RGB = (70, 130, 180)
_LINE_RGB = (230, 120, 20)
_AXIS_RGB = (60, 60, 60)
# Source pixels pooled per band when downsampling (bounds the float32 working copy).
_BAND_PIXELS = 1 << 22
_GAP_VALUE = 128  # mid grey between the panels, visible against black and white


def colormap(values: np.ndarray) -> np.ndarray:
    """Maps values in [0, 1] (any shape) to RGB floats in [0, 1] with the jet palette, shape ``[..., 3]``."""
    v = np.clip(np.nan_to_num(np.asarray(values, dtype=np.float32)), 0.0, 1.0)
    pos = v * (len(_JET) - 1)
    low = np.minimum(pos.astype(np.int64), len(_JET) - 2)
    frac = (pos - low)[..., None]
    return _JET[low] * (1.0 - frac) + _JET[low + 1] * frac


def to_grey(image: np.ndarray, low_pct: float = 1.0, high_pct: float = 99.0) -> np.ndarray:
    """Stretches a 2-D array to [0, 1] between its `low_pct` and `high_pct` percentiles (robust to outliers)."""
    image = np.asarray(image, dtype=np.float32)
    lo, hi = np.percentile(image, [low_pct, high_pct])
    if not hi > lo:
        return np.zeros_like(image)
    return np.clip((image - lo) / (hi - lo), 0.0, 1.0)


def outline(mask: np.ndarray) -> np.ndarray:
    """1-px inner contour of a boolean mask: the mask XOR its 3×3 erosion.

    The border is padded by replication, so a region cut off by the tile edge gets no line along that edge.
    """
    mask = np.asarray(mask, dtype=bool)
    padded = np.pad(mask, 1, mode="edge")
    h, w = mask.shape
    eroded = np.ones_like(mask)
    for dy in range(3):
        for dx in range(3):
            eroded &= padded[dy : dy + h, dx : dx + w]
    return mask ^ eroded


def cam_overlay(slice_image: np.ndarray, cam: np.ndarray, label: np.ndarray | None, alpha: float = 0.6) -> np.ndarray:
    """Blends a CAM heat map over a grey slice and draws the label's outline.

    The heat map's opacity grows with the CAM value (``alpha * cam``), so regions the model ignores show the
    plain papyrus and the hot regions show the palette.

    Args:
        slice_image: the grey image [H, W] (any range; stretched by `to_grey`).
        cam: the class activation map [H, W] in [0, 1].
        label: ink ground truth [H, W] (> 0.5 is ink), outlined in green; None draws no outline.
        alpha: opacity of the heat map where the CAM is 1.

    Returns:
        The RGB image, ``uint8 [H, W, 3]``.
    """
    if slice_image.shape != cam.shape or (label is not None and label.shape != cam.shape):
        raise ValueError(
            f"overlay needs equal shapes: slice {slice_image.shape}, cam {cam.shape}, "
            f"label {None if label is None else label.shape}"
        )
    grey = to_grey(slice_image)[..., None].repeat(3, axis=-1)
    weight = (alpha * np.clip(cam, 0.0, 1.0))[..., None]
    rgb = (1.0 - weight) * grey + weight * colormap(cam)
    out = np.round(rgb * 255.0).astype(np.uint8)
    if label is not None:
        out[outline(np.asarray(label) > 0.5)] = OUTLINE_RGB
    return out


def depth_profile_chart(
    input_profile: Sequence[float],
    cam_profile: Sequence[float] | None = None,
    *,
    first_slice: int = 0,
    title: str = "",
    size: tuple[int, int] = (360, 220),
) -> np.ndarray:
    """Draws per-slice attribution shares as a chart.

    Bars: the input-gradient × input share of each slice (any model). Line with dots: the Grad-CAM mass share of
    each slice (3-D target layers only). Both are fractions summing to 1 over the slices, on one y axis.

    Args:
        input_profile: share of |grad · x| per input slice.
        cam_profile: share of CAM mass per input slice, or None.
        first_slice: absolute index of slice 0 (the data's ``z_start``), for the x-axis labels.
        title: text above the chart.
        size: (width, height) in pixels.

    Returns:
        The RGB chart, ``uint8 [height, width, 3]``.
    """
    bars = np.nan_to_num(np.asarray(input_profile, dtype=np.float64))
    line = None if cam_profile is None else np.nan_to_num(np.asarray(cam_profile, dtype=np.float64))
    if bars.ndim != 1 or len(bars) == 0 or (line is not None and line.shape != bars.shape):
        raise ValueError(
            f"depth profiles must be 1-D and of equal length, got {bars.shape} and "
            f"{None if line is None else line.shape}"
        )
    width, height = size
    image = Image.new("RGB", size, (255, 255, 255))
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default()
    left, right, top, bottom = 40, width - 10, 22, height - 34
    top_value = max(float(bars.max()), float(line.max()) if line is not None else 0.0, 1e-12) * 1.1

    def y_of(value: float) -> float:
        return bottom - (bottom - top) * value / top_value

    count = len(bars)
    step = (right - left) / count
    for i, value in enumerate(bars):
        x0 = left + i * step + step * 0.15
        draw.rectangle([x0, y_of(value), x0 + step * 0.7, bottom], fill=_BAR_RGB)
    if line is not None:
        points = [(left + (i + 0.5) * step, y_of(v)) for i, v in enumerate(line)]
        if count > 1:
            draw.line(points, fill=_LINE_RGB, width=2)
        for x, y in points:
            draw.ellipse([x - 2, y - 2, x + 2, y + 2], fill=_LINE_RGB)
    draw.line([(left, top), (left, bottom), (right, bottom)], fill=_AXIS_RGB, width=1)
    tick_every = max(1, int(np.ceil(count / 8)))
    for i in range(0, count, tick_every):
        x = left + (i + 0.5) * step
        draw.line([(x, bottom), (x, bottom + 3)], fill=_AXIS_RGB)
        draw.text((x - 6, bottom + 4), str(first_slice + i), fill=_AXIS_RGB, font=font)
    draw.text((2, top - 4), f"{top_value / 1.1:.2f}", fill=_AXIS_RGB, font=font)
    draw.text((2, bottom - 8), "0", fill=_AXIS_RGB, font=font)
    draw.text((left, 4), title, fill=(0, 0, 0), font=font)
    legend = "bars: |grad*x| share per slice"
    if line is not None:
        legend += "   line: Grad-CAM share"
    draw.text((left, height - 14), legend, fill=_AXIS_RGB, font=font)
    return np.asarray(image, dtype=np.uint8)


def block_mean(image: np.ndarray, factor: int, band_pixels: int = _BAND_PIXELS) -> np.ndarray:
    """Mean over ``factor`` × ``factor`` blocks (partial blocks at the bottom/right edges average what they hold).

    Works in row bands, so a full-size map is never copied at once.

    Args:
        image: 2-D numeric array ``[h, w]``.
        factor: Block side (1 returns a float32 copy).
        band_pixels: Source pixels per band.

    Returns:
        float32 ``[ceil(h / factor), ceil(w / factor)]``.

    Raises:
        ValueError: A non-2-D or empty image, or ``factor < 1``.
    """
    if image.ndim != 2 or image.size == 0:
        raise ValueError(f"block_mean needs a non-empty 2-D image, got shape {image.shape}")
    if factor < 1:
        raise ValueError(f"block_mean factor must be >= 1, got {factor}")
    h, w = image.shape
    if factor == 1:
        return image.astype(np.float32)
    col_starts = np.arange(0, w, factor)
    col_counts = np.diff(np.append(col_starts, w)).astype(np.float32)
    out = np.empty((math.ceil(h / factor), col_starts.size), dtype=np.float32)
    rows = factor * max(1, band_pixels // (factor * w))
    for r0 in range(0, h, rows):
        band = image[r0 : r0 + rows].astype(np.float32)
        row_starts = np.arange(0, band.shape[0], factor)
        row_counts = np.diff(np.append(row_starts, band.shape[0])).astype(np.float32)
        sums = np.add.reduceat(np.add.reduceat(band, row_starts, axis=0), col_starts, axis=1)
        out[r0 // factor : r0 // factor + row_starts.size] = sums / (row_counts[:, None] * col_counts[None, :])
    return out


def side_by_side(prob: np.ndarray, label: np.ndarray | None, max_size: int, gap: int = 2) -> np.ndarray:
    """A grey uint8 image: probabilities (0–255) left, label (0/255) right, long side at most ``max_size``.

    Both panels are downsampled by the same integer factor with block means, so thin ink strokes show as grey
    rather than vanishing. Without a label the image is the probability panel alone.

    Args:
        prob: float ``[h, w]`` probabilities in [0, 1].
        label: ``[h, w]`` 0/1 labels, or None.
        max_size: Longest side of the result in pixels.
        gap: Width of the separating column.

    Returns:
        uint8 ``[H', W']`` with ``max(H', W') <= max_size``.

    Raises:
        ValueError: Mismatched shapes, an empty map, or a ``max_size`` too small for two panels and the gap.
    """
    if prob.ndim != 2 or prob.size == 0:
        raise ValueError(f"prob must be a non-empty 2-D map, got shape {prob.shape}")
    if label is not None and label.shape != prob.shape:
        raise ValueError(f"label shape {label.shape} differs from prob shape {prob.shape}")
    panels = 1 if label is None else 2
    extra = 0 if label is None else gap
    if max_size < panels + extra:
        raise ValueError(f"max_size {max_size} is too small for {panels} panel(s) and a {extra}-px gap")
    h, w = prob.shape
    factor = max(1, math.ceil(h / max_size), math.ceil(panels * w / (max_size - extra)))
    while max(math.ceil(h / factor), panels * math.ceil(w / factor) + extra) > max_size:
        factor += 1
    left = np.rint(np.clip(block_mean(prob, factor), 0.0, 1.0) * 255.0).astype(np.uint8)
    if label is None:
        return left
    right = np.rint(np.clip(block_mean(label, factor), 0.0, 1.0) * 255.0).astype(np.uint8)
    ph, pw = left.shape
    canvas = np.full((ph, 2 * pw + gap), _GAP_VALUE, dtype=np.uint8)
    canvas[:, :pw] = left
    canvas[:, pw + gap :] = right
    return canvas
