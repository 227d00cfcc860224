"""The synthetic generator's ink: rows of letter-like strokes, drawn as a bool image.

Real ink on papyrus is handwriting: lines of letters a few pixels thick with word gaps and paragraph breaks.
The generator's labels and ink come from this drawing, kept apart from the physics that turns it into voxels.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

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


def render_ink(height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """Lines of text: words of 2-7 letters, each letter a jittered glyph drawn with round-capped strokes.

    Args:
        height: image height in pixels.
        width: image width in pixels.
        rng: the ink's own random stream; the drawing depends on nothing else.

    Returns:
        bool ``[height, width]``, True on the strokes.
    """
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
