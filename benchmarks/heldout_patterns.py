"""The random 2-D patterns of the held-out family: smooth noise, curved surface, fibres, mask, strokes, artefacts.

Each function draws one pattern from the generator it is given, so `benchmarks.heldout_family` decides the order
of the draws (and with it every fragment's bytes) in one place, and reads as the physics built from these parts.
Like the family, nothing here uses the project's own generator (`datamodules/synthetic/generator.py`).
"""

from __future__ import annotations

import math

import cv2
import numpy as np


def value_noise(rng: np.random.Generator, height: int, width: int, scale: float) -> np.ndarray:
    """Smooth random field with features about ``scale`` px across, zero mean and unit std.

    Args:
        rng: Random generator.
        height: Output height.
        width: Output width.
        scale: Lattice spacing in pixels.

    Returns:
        float32 array [height, width].
    """
    scale = max(float(scale), 1.0)
    gh, gw = int(math.ceil(height / scale)) + 4, int(math.ceil(width / scale)) + 4
    lattice = rng.standard_normal((gh, gw)).astype(np.float32)
    big = cv2.resize(lattice, (int(round(gw * scale)), int(round(gh * scale))), interpolation=cv2.INTER_CUBIC)
    oy, ox = int(rng.integers(0, int(scale) + 1)), int(rng.integers(0, int(scale) + 1))
    out = big[oy : oy + height, ox : ox + width]
    out = out - out.mean()
    return (out / (out.std() + 1e-6)).astype(np.float32)


def grids(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinate grids (y, x), float32."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    return y, x


def surface(rng: np.random.Generator, height: int, width: int, depth: int) -> np.ndarray:
    """Smooth curved front-surface depth: tilt + bump + three plane waves, spanning ±3.5–5 slices.

    Args:
        rng: Random generator.
        height: Frame height.
        width: Frame width.
        depth: Number of slices (the centre and span scale with it; 65 gives a centre near 30).

    Returns:
        float32 [H, W] surface depth in slices.
    """
    y, x = grids(height, width)
    size = float(max(height, width))
    v, u = (y - height / 2) / size, (x - width / 2) / size
    z = rng.normal(0, 1) * u + rng.normal(0, 1) * v
    cy, cx = rng.uniform(0.2, 0.8) * height, rng.uniform(0.2, 0.8) * width
    radius = rng.uniform(0.15, 0.35) * size
    z += rng.choice([-1.0, 1.0]) * rng.uniform(0.5, 1.5) * np.exp(-((y - cy) ** 2 + (x - cx) ** 2) / (2 * radius**2))
    for _ in range(3):
        angle = rng.uniform(0, math.pi)
        wavelength = rng.uniform(0.5, 2.0)
        z += rng.uniform(0.3, 1.0) * np.sin(
            2 * math.pi * (u * math.cos(angle) + v * math.sin(angle)) / wavelength + rng.uniform(0, 2 * math.pi)
        )
    span = rng.uniform(3.5, 5.0) * min(1.0, depth / 65)
    centre = rng.uniform(28.0, 32.0) * depth / 65
    lo, hi = float(z.min()), float(z.max())
    return (centre + span * (2 * (z - lo) / max(hi - lo, 1e-6) - 1)).astype(np.float32)


def fibres(rng: np.random.Generator, height: int, width: int, angle_deg: float) -> np.ndarray:
    """One layer of parallel papyrus fibres at ``angle_deg`` (0 = horizontal), unit std.

    Fibres are bands of random width (2–9 px) and strength along the fibre direction, with rounded
    cross-sections, slowly wiggling sideways and modulated along their length.

    Args:
        rng: Random generator.
        height: Frame height.
        width: Frame width.
        angle_deg: Fibre direction in degrees from the x axis.

    Returns:
        float32 [H, W] texture with zero mean and unit std.
    """
    y, x = grids(height, width)
    theta = math.radians(angle_deg)
    across = -x * math.sin(theta) + y * math.cos(theta)  # coordinate perpendicular to the fibres
    across = across + 2.5 * value_noise(rng, height, width, rng.uniform(60, 120))
    lo, hi = float(across.min()) - 2, float(across.max()) + 2
    step = 0.25
    grid = np.arange(lo, hi + step, step, dtype=np.float32)
    profile = np.zeros_like(grid)
    pos = lo
    while pos < hi:
        fibre_width = rng.uniform(2.0, 9.0)
        strength = rng.normal(0.0, 1.0)
        inside = (grid >= pos) & (grid < pos + fibre_width)
        frac = (grid[inside] - pos) / fibre_width
        profile[inside] = strength * np.sqrt(np.sin(math.pi * frac))
        pos += fibre_width + rng.uniform(0.0, 1.5)
    texture = np.interp(across, grid, profile).astype(np.float32)
    texture *= 1.0 + 0.35 * value_noise(rng, height, width, rng.uniform(15, 30))
    texture -= texture.mean()
    return (texture / (texture.std() + 1e-6)).astype(np.float32)


def mask(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Irregular papyrus region: thresholded smooth field with radial fall-off, rough edges, 70–90 % cover.

    Args:
        rng: Random generator.
        height: Frame height.
        width: Frame width.

    Returns:
        bool [H, W].
    """
    y, x = grids(height, width)
    size = float(max(height, width))
    cy, cx = height / 2 + rng.normal(0, 0.05) * height, width / 2 + rng.normal(0, 0.05) * width
    radial = ((y - cy) / height) ** 2 + ((x - cx) / width) ** 2
    score = (
        -6.0 * radial
        + 0.35 * value_noise(rng, height, width, size / 4)
        + 0.12 * value_noise(rng, height, width, size / 16)
        + 0.04 * value_noise(rng, height, width, 4)
    )
    cover = rng.uniform(0.72, 0.9)
    mask = score > np.quantile(score, 1.0 - cover)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=4)
    if count > 1:
        biggest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
        mask = labels == biggest
    return mask


def _bezier(points: np.ndarray, n: int = 24) -> np.ndarray:
    """Samples a Bézier curve of any degree at ``n`` points (de Casteljau)."""
    t = np.linspace(0.0, 1.0, n)[:, None, None]
    pts = np.broadcast_to(points[None], (n, *points.shape)).astype(np.float64)
    while pts.shape[1] > 1:
        pts = (1 - t) * pts[:, :-1] + t * pts[:, 1:]
    return pts[:, 0]


def _glyph(rng: np.random.Generator, canvas: np.ndarray, box: tuple[float, float, float, float], pen: int) -> None:
    """Draws 1–3 random strokes (Bézier curve, elliptic arc or short polyline) inside ``box`` on ``canvas``.

    Args:
        rng: Random generator.
        canvas: uint8 [H, W] drawn on in place (255 = stroke).
        box: (x0, y0, x1, y1) glyph box in pixels.
        pen: Nominal pen width in pixels.
    """
    x0, y0, x1, y1 = box
    w, h = x1 - x0, y1 - y0
    for _ in range(int(rng.choice([1, 2, 3], p=[0.5, 0.38, 0.12]))):
        kind = rng.choice(3, p=[0.45, 0.3, 0.25])
        if kind == 0:  # quadratic or cubic Bézier
            ctrl = np.stack(
                [rng.uniform(x0 - 0.1 * w, x1 + 0.1 * w, 4), rng.uniform(y0 - 0.1 * h, y1 + 0.1 * h, 4)], axis=1
            )
            if rng.random() < 0.5:
                ctrl = ctrl[:3]
            pts = _bezier(ctrl)
        elif kind == 1:  # elliptic arc
            cx, cy = rng.uniform(x0 + 0.3 * w, x1 - 0.3 * w), rng.uniform(y0 + 0.3 * h, y1 - 0.3 * h)
            ax, ay = rng.uniform(0.2, 0.5) * w, rng.uniform(0.2, 0.5) * h
            start = rng.uniform(0, 2 * math.pi)
            sweep = rng.uniform(0.6, 1.6) * math.pi
            t = np.linspace(start, start + sweep, 24)
            pts = np.stack([cx + ax * np.cos(t), cy + ay * np.sin(t)], axis=1)
        else:  # short polyline
            n = int(rng.integers(2, 5))
            pts = np.stack([rng.uniform(x0, x1, n), rng.uniform(y0, y1, n)], axis=1)
        thickness = int(np.clip(pen + rng.integers(-1, 2), 3, 8))
        cv2.polylines(canvas, [np.round(pts).astype(np.int32)], False, 255, thickness=thickness, lineType=cv2.LINE_8)


def strokes(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Lines of pseudo-text: bands of glyph-like stroke clusters, with word gaps and ragged line ends.

    Args:
        rng: Random generator.
        height: Frame height.
        width: Frame width.

    Returns:
        bool [H, W] stroke mask.
    """
    canvas = np.zeros((height, width), dtype=np.uint8)
    line_height = rng.uniform(22, 30)
    spacing = rng.uniform(18, 30)
    slope = rng.normal(0, 0.02)
    y = rng.uniform(-line_height / 2, spacing)
    while y < height:
        pen = int(rng.integers(3, 9))
        x = rng.uniform(-10, 0.08 * width)
        x_end = width - rng.uniform(-10, 0.1 * width)
        phase, wave = rng.uniform(0, 2 * math.pi), rng.uniform(0, 3)
        while x < x_end:
            glyph_w = rng.uniform(14, 28)
            base = y + slope * x + wave * math.sin(x / 80 + phase)
            _glyph(rng, canvas, (x, base, x + glyph_w, base + line_height), pen)
            x += glyph_w + rng.uniform(4, 10)
            if rng.random() < 0.18:
                x += rng.uniform(14, 30)  # word gap
        y += line_height + spacing
    return canvas > 0


def rings(rng: np.random.Generator, height: int, width: int, amplitude: float) -> np.ndarray:
    """Concentric ring artefacts around an off-centre rotation axis, zero mean, std about ``amplitude``."""
    y, x = grids(height, width)
    size = float(max(height, width))
    angle = rng.uniform(0, 2 * math.pi)
    dist = rng.uniform(0.4, 1.2) * size
    cy, cx = height / 2 + dist * math.sin(angle), width / 2 + dist * math.cos(angle)
    radius = np.sqrt((y - cy) ** 2 + (x - cx) ** 2)
    r_max = int(radius.max()) + 3
    profile = np.where(rng.random(r_max) < 0.08, rng.normal(0, 1, r_max), 0.0).astype(np.float32)
    profile = cv2.GaussianBlur(profile[None], (0, 0), sigmaX=0.8)[0]
    rings = np.interp(radius, np.arange(r_max, dtype=np.float32), profile).astype(np.float32)
    rings -= rings.mean()
    return rings * (amplitude / (rings.std() + 1e-6))


def streaks(rng: np.random.Generator, height: int, width: int, depth: int) -> list[tuple[int, int, np.ndarray]]:
    """2–4 straight streaks, each spanning a short run of slices.

    Returns:
        List of (first slice, last slice + 1, float32 [H, W] field in intensity units).
    """
    out = []
    diag = math.hypot(height, width)
    for _ in range(int(rng.integers(2, 5))):
        img = np.zeros((height, width), dtype=np.float32)
        cy, cx = rng.uniform(0, height), rng.uniform(0, width)
        angle = rng.uniform(0, math.pi)
        dx, dy = math.cos(angle) * diag, math.sin(angle) * diag
        p0 = (int(round(cx - dx)), int(round(cy - dy)))
        p1 = (int(round(cx + dx)), int(round(cy + dy)))
        cv2.line(img, p0, p1, float(rng.choice([-1.0, 1.0]) * rng.uniform(1500, 3000)), int(rng.integers(1, 3)))
        img = cv2.GaussianBlur(img, (0, 0), sigmaX=0.7)
        z0 = int(rng.integers(0, depth))
        out.append((z0, min(depth, z0 + int(rng.integers(4, 16))), img))
    return out
