"""A chart of fragments' depth intensity profiles, with each one's surface and slice window marked (numpy + Pillow).

Drawn by ``scripts/inspect_data.py``: one curve per fragment over its layers in stored order, each scaled to
[0, 1] between its own minimum and maximum (scans differ in brightness; the shape is what locates the surface),
a dashed vertical line at the surface and a bar under the axis spanning the window ``[z_start, z_end)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFont

# Ten distinguishable colours (the usual categorical palette), reused in turn beyond ten fragments.
PALETTE = (
    (31, 119, 180),
    (255, 127, 14),
    (44, 160, 44),
    (214, 39, 40),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
    (127, 127, 127),
    (188, 189, 34),
    (23, 190, 207),
)
_AXIS_RGB = (60, 60, 60)
_ROW = 14  # pixels per window bar / legend line


@dataclass(frozen=True)
class ProfileCurve:
    """One fragment's curve.

    Attributes:
        label: the legend text.
        values: the profile, one value per layer in stored order.
        surface: the surface's position in layers (None: not found).
        window: ``(z_start, z_end)`` in stored order (None: none).
    """

    label: str
    values: Sequence[float]
    surface: float | None = None
    window: tuple[int, int] | None = None


def profile_chart(curves: Sequence[ProfileCurve], *, title: str = "", width: int = 720) -> np.ndarray:
    """Draws the curves on one chart; returns an RGB ``uint8 [H, W, 3]`` image.

    Raises:
        ValueError: no curve, or a curve with no value.
    """
    if not curves or any(len(c.values) == 0 for c in curves):
        raise ValueError("profile_chart needs at least one curve, each with at least one value")
    plot_height = 240
    left, right, top = 44, width - 12, 24
    bottom = top + plot_height
    bars_top = bottom + 22
    legend_top = bars_top + _ROW * len(curves) + 8
    image = Image.new("RGB", (width, legend_top + _ROW * len(curves) + 6), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default()
    layers = max(len(c.values) for c in curves)
    span = max(layers - 1, 1)

    def x_of(z: float) -> float:
        return left + (right - left) * z / span

    def y_of(v: float) -> float:
        return bottom - (bottom - top) * v

    draw.line([(left, top), (left, bottom), (right, bottom)], fill=_AXIS_RGB)
    for z in range(0, layers, max(1, int(np.ceil(layers / 12)))):
        draw.line([(x_of(z), bottom), (x_of(z), bottom + 3)], fill=_AXIS_RGB)
        draw.text((x_of(z) - 6, bottom + 5), str(z), fill=_AXIS_RGB, font=font)
    draw.text((4, top - 4), "max", fill=_AXIS_RGB, font=font)
    draw.text((4, bottom - 8), "min", fill=_AXIS_RGB, font=font)
    draw.text((left, 6), title, fill=(0, 0, 0), font=font)
    for i, curve in enumerate(curves):
        colour = PALETTE[i % len(PALETTE)]
        values = np.asarray(curve.values, dtype=np.float64)
        lo, hi = float(values.min()), float(values.max())
        scaled = (values - lo) / (hi - lo) if hi > lo else np.full_like(values, 0.5)
        points = [(x_of(z), y_of(v)) for z, v in enumerate(scaled)]
        if len(points) > 1:
            draw.line(points, fill=colour, width=2)
        else:
            draw.ellipse([points[0][0] - 2, points[0][1] - 2, points[0][0] + 2, points[0][1] + 2], fill=colour)
        if curve.surface is not None:
            _dashed_vertical(draw, x_of(curve.surface), top, bottom, colour)
        row = bars_top + _ROW * i + _ROW // 2
        if curve.window is not None:
            # The bar spans the layers read: from z_start to the last layer z_end - 1.
            start, end = curve.window
            draw.line([(x_of(start), row), (x_of(end - 1), row)], fill=colour, width=5)
            draw.text((x_of(end - 1) + 4, row - 6), f"[{start}, {end})", fill=colour, font=font)
        legend_row = legend_top + _ROW * i
        draw.rectangle([left, legend_row + 3, left + 14, legend_row + 10], fill=colour)
        draw.text((left + 20, legend_row), curve.label, fill=(0, 0, 0), font=font)
    return np.asarray(image, dtype=np.uint8)


def _dashed_vertical(draw: ImageDraw.ImageDraw, x: float, top: float, bottom: float, colour: tuple) -> None:
    y = top
    while y < bottom:
        draw.line([(x, y), (x, min(y + 5, bottom))], fill=colour, width=1)
        y += 9
