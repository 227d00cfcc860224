"""A held-out family of synthetic fragments, written independently of the project's generator (datamodules/).

This module exists only to *judge* models: the quality benchmark trains on the project's own synthetic
generator (or on real data) and tests on fragments from this family, which no recipe was tuned on.
Nothing in training, validation or hyper-parameter search may read these fragments; otherwise the
benchmark measures how well a recipe fits this generator rather than how well it generalises.

The family models a different physical picture from a flat wobbling sheet with letter strokes:

- **Curved sheet.** The papyrus front surface lies at depth ``z_s(y, x)``: a bilinear tilt plus a Gaussian
  bump plus three low-frequency plane waves, rescaled to span about ±3.5–5 slices around a centre slice near
  30 (of 65), plus a small fibre relief (a few tenths of a slice). The sheet extends from ``z_s`` to deeper
  slices over a thickness that varies smoothly across the fragment (about 4–9 slices); its back face is rough.
- **Depth profile.** Air is dark (~9 000), the papyrus body bright (~30 000) with a thin brighter layer just
  under the front surface; both faces are soft (sigmoid edges of about 0.8–0.9 slice) and the back face is
  rough. Air has a slow brightness drift across the frame.
- **Texture.** Two crossed fibre layers (recto fibres near the front, verso fibres behind), each at a random
  angle within ±12° of horizontal resp. vertical, made of fibres with random widths (2–9 px) and strengths,
  wiggling slowly and modulated along their length.
- **Noise.** ``noise = correlated + intensity-dependent + rings + streaks``: white Gaussian noise blurred with
  a small Gaussian kernel and rescaled; Poisson-like noise of std ``k·sqrt(I)``; concentric ring artefacts
  around an off-centre axis (a fixed pattern whose gain varies slowly with depth); and a few straight streaks
  spanning short depth ranges. Air gets the same noise. The *per-voxel noise sigma* is the std of this total
  noise inside the sheet (computed from the noise parameters; within a few % of the empirical value).
- **Ink.** Lines of "text" made of glyph-like clusters of random Bézier curves, elliptic arcs and short
  polylines, 3–8 px wide. Ink is **brighter** than papyrus: it adds ``ink_to_noise × sigma`` (peak) to the
  voxels within about 1.5 slices under the (displaced) front surface, so it follows ``z_s``. It is patchy:
  random blobs covering about 25 % of the stroke pixels carry no ink. Ink also raises the surface towards the
  air by ``0.25 × min(1, ink_to_noise / 0.7)`` slice. (At 0.5 slice the shifted front edge alone changed the
  edge slice by about 3 sigma, far stronger than the ink itself; at 0.25 slice on the softer edge the cue is
  about 1 sigma and competes with a fibre relief of similar size.) ``ink_to_noise=0`` therefore gives an
  ink-free volume: a null control with labels but no signal.
- **Labels.** The full stroke mask (including the blobs without ink) dilated by 1–2 px, inside the mask, 0/255.
- **Mask.** A thresholded smooth random field with a radial fall-off and rough edges, its largest connected
  component, covering about 70–90 % of the frame. Outside it there is only air (and noise).

On-disk layout (what the project reads)::

    <root>/surface_volume/00.tif … 64.tif   # 2-D uint16 slices, uncompressed
    <root>/mask.png                         # 0/255 uint8 L
    <root>/inklabels.png                    # 0/255 uint8 L

The 2-D patterns (noise, surface, fibres, mask, strokes, artefacts) are drawn in `benchmarks.heldout_patterns`;
this file combines them into fields, renders the slices and writes them. Every file is written under a
temporary name in its folder and moved into place with ``os.replace`` (`utils.atomic`, `utils.png`).
Everything is deterministic given the seed. A 768×768×65 fragment takes about 2–3 s on one core.

Difficulty at the default ``ink_to_noise=0.7`` (768², seeds 0–3): labels cover 18–22 % of the mask; the best
single-slice global threshold reaches F0.5 0.22–0.27 (predicting "all ink" scores 0.21–0.26), and even
thresholding the volume read along the true surface, smoothed 5×5, reaches only 0.27–0.33.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import tifffile

from benchmarks import heldout_patterns as patterns
from utils.atomic import atomic_path
from utils.png import write_png

__all__ = ["make_heldout_fragment", "make_heldout_set"]

_AIR = 9000.0
_PAPYRUS = 30000.0
_FRONT_LAYER = 4000.0  # extra brightness of the thin layer just under the front surface
_TEXTURE = 0.06  # fibre texture amplitude, as a fraction of the papyrus level
_FRONT_EDGE = 0.8  # sigmoid scale (slices) of the air/papyrus front edge
_BACK_EDGE = 0.9  # sigmoid scale (slices) of the rough back face
_INK_DEPTH = (0.0, 1.5)  # ink occupies this range of depths (slices) under the front surface
_INK_EDGE = 0.25  # sigmoid scale (slices) of the ink layer's depth edges
_INK_RAISE = 0.25  # surface displacement (slices) under ink at ink_to_noise >= 0.7


@dataclass
class _Fields:
    """The 2-D fields and scalars that define one fragment; slices are rendered from these."""

    depth: int
    mask: np.ndarray  # bool [H, W]
    labels: np.ndarray  # bool [H, W]
    strokes: np.ndarray  # bool [H, W], the drawn strokes before dilation
    ink: np.ndarray  # float32 [H, W] in [0, 1], the ink actually present (patchy, soft edges)
    surface: np.ndarray  # float32 [H, W], front-surface depth including ink displacement and relief
    thickness: np.ndarray  # float32 [H, W], sheet thickness incl. back-face roughness
    front_fibres: np.ndarray  # float32 [H, W], unit-std texture of the front fibre layer
    back_fibres: np.ndarray  # float32 [H, W], unit-std texture of the back fibre layer
    air: np.ndarray  # float32 [H, W], air level with its slow drift
    rings: np.ndarray  # float32 [H, W], ring artefact pattern (already in intensity units)
    ring_gain: np.ndarray  # float32 [D], per-slice gain of the ring pattern
    streaks: list[tuple[int, int, np.ndarray]] = field(default_factory=list)  # (z0, z1, field) per streak
    correlated_std: float = 0.0
    correlated_blur: float = 1.0
    poisson_k: float = 0.0
    noise_sigma: float = 0.0
    ink_amplitude: float = 0.0
    z_range: tuple[int, int] = (0, 0)  # slices that can contain papyrus


def _sigmoid(x: np.ndarray) -> np.ndarray:
    """Logistic function, clipped so float32 ``exp`` never overflows."""
    return 1.0 / (1.0 + np.exp(-np.clip(x, -60.0, 60.0)))


def _ink_layer(depth_below: np.ndarray) -> np.ndarray:
    """Ink depth profile: ~1 inside ``_INK_DEPTH`` slices under the front surface, 0 elsewhere (peak 1)."""
    lo, hi = _INK_DEPTH
    inside = _sigmoid((depth_below - lo) / _INK_EDGE) * _sigmoid((hi - depth_below) / _INK_EDGE)
    peak = 1.0 / (1.0 + math.exp(-(hi - lo) / 2 / _INK_EDGE)) ** 2
    return inside / peak


def _build(height: int, width: int, depth: int, seed: int, ink_to_noise: float) -> _Fields:
    """Draws every 2-D field and scalar of one fragment from ``seed``.

    Args:
        height: Frame height.
        width: Frame width.
        depth: Number of slices.
        seed: Random seed.
        ink_to_noise: Peak ink amplitude divided by the per-voxel noise sigma.

    Returns:
        The fragment's fields.
    """
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0x48_45_4C_44]))  # "HELD"
    mask = patterns.mask(rng, height, width)

    strokes = patterns.strokes(rng, height, width) & mask
    radius = int(rng.integers(1, 3))
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
    labels = (cv2.dilate(strokes.astype(np.uint8), kernel) > 0) & mask

    # Patchy ink: drop blobs covering ~25 % of each stroke's pixels.
    blobs = patterns.value_noise(rng, height, width, rng.uniform(5, 9))
    keep = strokes.copy()
    if strokes.any():
        keep &= blobs > np.quantile(blobs[strokes], 0.25)
    ink = cv2.GaussianBlur(keep.astype(np.float32), (0, 0), sigmaX=0.6)
    ink = np.clip(ink * (0.9 + 0.1 * np.clip(patterns.value_noise(rng, height, width, 40), -1, 1)), 0, 1) * mask
    ink = ink.astype(np.float32)

    front_fibres = patterns.fibres(rng, height, width, rng.uniform(-12, 12))
    back_fibres = patterns.fibres(rng, height, width, 90 + rng.uniform(-12, 12))
    raise_by = _INK_RAISE * min(1.0, max(ink_to_noise, 0.0) / 0.7)
    bump = cv2.GaussianBlur(ink, (0, 0), sigmaX=1.0)
    surface = patterns.surface(rng, height, width, depth) + 0.25 * front_fibres - raise_by * bump

    t_min, t_max = rng.uniform(4.0, 5.0), rng.uniform(7.5, 9.0)
    t = patterns.value_noise(rng, height, width, max(height, width) / 3)
    t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
    thickness = t_min + (t_max - t_min) * t + 0.4 * np.clip(patterns.value_noise(rng, height, width, 5), -2, 2)
    thickness = thickness.astype(np.float32) * min(1.0, depth / 65)

    air = (_AIR * (1.0 + 0.03 * patterns.value_noise(rng, height, width, max(height, width) / 2))).astype(np.float32)

    correlated_std = rng.uniform(1200, 1600)
    poisson_k = rng.uniform(900, 1200) / math.sqrt(_PAPYRUS)
    rings = patterns.rings(rng, height, width, rng.uniform(300, 500))
    phase, period = rng.uniform(0, 2 * math.pi), rng.uniform(20, 60)
    ring_gain = (0.75 + 0.25 * np.cos(2 * math.pi * np.arange(depth) / period + phase)).astype(np.float32)
    streaks = patterns.streaks(rng, height, width, depth)

    # Per-voxel noise sigma inside the sheet: the independent parts add in quadrature.
    inside = mask if mask.any() else np.ones_like(mask)
    var = correlated_std**2 + poisson_k**2 * (_PAPYRUS + _FRONT_LAYER / 4)
    var += float(np.mean(ring_gain**2)) * float(rings[inside].var())
    for z0, z1, img in streaks:
        var += (z1 - z0) / depth * float(np.mean(img[inside] ** 2))
    noise_sigma = math.sqrt(var)

    z_lo = max(0, int(math.floor(float(surface.min()) - 4)))
    z_hi = min(depth, int(math.ceil(float((surface + thickness).max()) + 5)))
    return _Fields(
        depth=depth,
        mask=mask,
        labels=labels,
        strokes=strokes,
        ink=ink,
        surface=surface.astype(np.float32),
        thickness=thickness,
        front_fibres=front_fibres,
        back_fibres=back_fibres,
        air=air,
        rings=rings,
        ring_gain=ring_gain,
        streaks=streaks,
        correlated_std=correlated_std,
        correlated_blur=rng.uniform(0.8, 1.4),
        poisson_k=poisson_k,
        noise_sigma=noise_sigma,
        ink_amplitude=max(ink_to_noise, 0.0) * noise_sigma,
        z_range=(z_lo, z_hi),
    )


def _clean_slice(f: _Fields, z: int) -> np.ndarray:
    """Noise-free intensity of slice ``z`` (float32 [H, W])."""
    if not f.z_range[0] <= z < f.z_range[1]:
        return f.air.copy()
    below = z - f.surface  # depth under the front surface, in slices
    sheet = _sigmoid(below / _FRONT_EDGE) * _sigmoid((f.thickness - below) / _BACK_EDGE)
    sheet *= f.mask
    back = np.clip(below / np.maximum(f.thickness, 1.0), 0.0, 1.0)
    texture = _TEXTURE * _PAPYRUS * ((1.0 - back) * f.front_fibres + back * f.back_fibres)
    papyrus = (_PAPYRUS - f.air) + _FRONT_LAYER * np.exp(-(((below - 0.7) / 0.8) ** 2)) + texture
    clean = f.air + sheet * papyrus
    if f.ink_amplitude > 0:
        clean += f.ink_amplitude * f.ink * _ink_layer(below)
    return clean.astype(np.float32)


def _noise_slice(f: _Fields, z: int, clean: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Total noise of slice ``z`` for the given clean slice (float32 [H, W])."""
    shape = clean.shape
    white = rng.standard_normal(shape, dtype=np.float32)
    ksize = int(round(8 * f.correlated_blur + 1)) | 1
    blurred = cv2.GaussianBlur(white, (ksize, ksize), sigmaX=f.correlated_blur, borderType=cv2.BORDER_REFLECT)
    k1 = cv2.getGaussianKernel(ksize, f.correlated_blur)
    gain = 1.0 / float((k1**2).sum())  # std of white noise blurred by k1 ⊗ k1 is sum(k1²)
    noise = blurred * np.float32(gain * f.correlated_std)
    noise += f.poisson_k * np.sqrt(np.maximum(clean, 0.0)) * rng.standard_normal(shape, dtype=np.float32)
    noise += f.ring_gain[z] * f.rings
    for z0, z1, img in f.streaks:
        if z0 <= z < z1:
            noise += img
    return noise


def make_heldout_fragment(
    root: Path,
    *,
    height: int = 768,
    width: int = 768,
    depth: int = 65,
    seed: int = 0,
    ink_to_noise: float = 0.7,
) -> Path:
    """Writes one held-out fragment (slices, mask, labels) under ``root``.

    Args:
        root: Fragment folder; created if missing. Existing files of the same names are replaced.
        height: Frame height in pixels.
        width: Frame width in pixels.
        depth: Number of slices (the surface sits near slice 30 of 65 and scales with ``depth``).
        seed: Random seed; the output is a deterministic function of all arguments.
        ink_to_noise: Peak ink amplitude over the per-voxel noise sigma (ink is brighter than papyrus).
            It also scales the surface displacement under ink (0.5 slice at 0.7 and above); 0 gives no ink signal.

    Returns:
        ``root``.
    """
    root = Path(root)
    slices_dir = root / "surface_volume"
    slices_dir.mkdir(parents=True, exist_ok=True)
    fields = _build(height, width, depth, seed, ink_to_noise)
    noise_seeds = np.random.SeedSequence([int(seed), 0x4E_4F_49_53]).spawn(depth)  # "NOIS"
    digits = max(2, len(str(depth - 1)))
    for z in range(depth):
        clean = _clean_slice(fields, z)
        volume = clean + _noise_slice(fields, z, clean, np.random.default_rng(noise_seeds[z]))
        image = np.clip(np.rint(volume), 0, 65535).astype(np.uint16)
        with atomic_path(slices_dir / f"{z:0{digits}d}.tif", fsync=False) as temp:
            tifffile.imwrite(temp, image)
    write_png(root / "mask.png", fields.mask.astype(np.uint8) * 255)
    write_png(root / "inklabels.png", fields.labels.astype(np.uint8) * 255)
    return root


def make_heldout_set(
    out_dir: Path,
    ids: Sequence[str] = ("hA", "hB", "hC", "hD"),
    size: int = 768,
    seed: int = 0,
    ink_to_noise: float = 0.7,
) -> list[Path]:
    """Writes one held-out fragment per id under ``out_dir/<id>``, each with its own derived seed.

    Args:
        out_dir: Parent folder of the fragments.
        ids: Fragment ids (folder names).
        size: Height and width of every fragment.
        seed: Base seed; fragment ``i`` uses a seed derived from ``(seed, i)``.
        ink_to_noise: Peak ink amplitude over the per-voxel noise sigma.

    Returns:
        The fragment folders, in the order of ``ids``.
    """
    out_dir = Path(out_dir)
    paths = []
    for index, fragment_id in enumerate(ids):
        fragment_seed = int(np.random.SeedSequence([int(seed), index]).generate_state(1)[0])
        paths.append(
            make_heldout_fragment(
                out_dir / fragment_id, height=size, width=size, seed=fragment_seed, ink_to_noise=ink_to_noise
            )
        )
    return paths
