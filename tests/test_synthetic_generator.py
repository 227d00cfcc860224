"""Tests of the synthetic generator: realistic fields, realism knobs, and that the ink needs learning."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from datamodules.synthetic import generator as synthetic_generator
from datamodules.synthetic import make_fragment
from datamodules.synthetic.generator import FAINT_REALISM, Realism, surface_depth
from datamodules.synthetic.single_slice import best_single_slice_f05
from tests.synthetic_files import read_png, read_volume


def _best_f05(scores: np.ndarray, truth: np.ndarray) -> float:
    order = np.argsort(-scores, kind="stable")
    tp = np.cumsum(truth[order])
    fp = np.cumsum(~truth[order])
    return float((1.25 * tp / (1.25 * tp + 0.25 * (truth.sum() - tp) + fp)).max())


def _auc(scores: np.ndarray, truth: np.ndarray) -> float:
    ranks = np.empty(len(scores))
    ranks[np.argsort(scores, kind="stable")] = np.arange(1, len(scores) + 1)
    pos = int(truth.sum())
    return float((ranks[truth].sum() - pos * (pos + 1) / 2) / (pos * (len(truth) - pos)))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_labels_and_mask_are_non_trivial(tmp_path: Path, seed: int) -> None:
    fragment = make_fragment(tmp_path / "f", 160, 192, depth=3, seed=seed)
    mask = read_png(fragment / "mask.png") > 0
    labels = read_png(fragment / "inklabels.png") > 0
    assert 0.4 < mask.mean() < 0.95  # most of the fragment, with non-papyrus margins
    assert not mask[0, 0] and mask[80, 96]
    assert 0.03 < labels[mask].mean() < 0.40


def test_surface_wobbles_inside_the_default_slice_range() -> None:
    zs = surface_depth(256, 256, seed=0)
    assert zs.shape == (256, 256) and zs.dtype == np.float32
    assert 15 <= zs.min() and zs.max() + 3 <= 44  # ink within slices 15..44
    assert zs.max() - zs.min() > 4  # which slice holds the ink changes across the fragment
    assert np.abs(np.diff(zs, axis=1)).max() < 0.5  # smooth: no jumps between neighbours
    shifted = surface_depth(64, 64, depth=30, seed=0, surface_z=10.0)
    assert 10 - 3 <= shifted.min() and shifted.max() <= 10 + 3


def test_learning_is_needed_but_the_ink_is_there(tmp_path: Path) -> None:
    """No slice + global threshold finds the ink, but an oracle that knows the surface does, far better."""
    size, seed = 256, 11
    fragment = make_fragment(tmp_path / "f", size, size, seed=seed)
    bound = best_single_slice_f05(fragment)
    assert bound < 0.35

    mask = read_png(fragment / "mask.png") > 0
    truth = (read_png(fragment / "inklabels.png") > 0)[mask]
    volume = read_volume(fragment).astype(np.float32)
    zs = surface_depth(size, size, seed=seed)
    rows, cols = np.indices(zs.shape)

    def at_depth(offset: float) -> np.ndarray:
        z = zs + offset
        z0 = np.floor(z).astype(int)
        frac = z - z0
        return volume[z0, rows, cols] * (1 - frac) + volume[z0 + 1, rows, cols] * frac

    # The oracle reads the surface (where ink sits) and the sheet interior (same fibres, no ink) along the true
    # z_s, removes the interior's share by a label-free least-squares fit, and pools over 3x3 pixels.
    surface = np.mean([at_depth(o) for o in (0.0, 0.5, 1.0)], axis=0)
    interior = np.mean([at_depth(o) for o in (2.5, 3.0, 3.5)], axis=0)
    design = np.stack([np.ones(mask.sum()), interior[mask]], axis=1)
    coef, *_ = np.linalg.lstsq(design, surface[mask], rcond=None)
    residual = np.pad(surface - coef[0] - coef[1] * interior, 1, mode="edge")
    pooled = sum(residual[dy : dy + size, dx : dx + size] for dy in range(3) for dx in range(3)) / 9
    oracle_f05 = _best_f05(pooled[mask], truth)
    assert _auc(pooled[mask], truth) > 0.8
    assert oracle_f05 > bound + 0.25, (oracle_f05, bound)


def test_realism_knobs_patchy_ink_loose_labels_varying_thickness(tmp_path: Path) -> None:
    """Each knob does what it says: the clean fragment and the realistic one share strokes, mask and noise."""
    size, seed = 192, 5
    clean = make_fragment(tmp_path / "clean", size, size, seed=seed)
    real = make_fragment(tmp_path / "real", size, size, seed=seed, realism=FAINT_REALISM)
    mask = read_png(clean / "mask.png") > 0
    np.testing.assert_array_equal(mask, read_png(real / "mask.png") > 0)
    strokes = read_png(clean / "inklabels.png") > 0
    loose = read_png(real / "inklabels.png") > 0
    assert (loose | ~strokes).all()  # labels cover every stroke pixel ...
    assert 1.2 < loose.sum() / strokes.sum() < 3.0  # ... and a margin around it

    # Patchy ink: the realistic volume differs from the clean one at the surface of only part of the strokes.
    clean_volume, real_volume = read_volume(clean).astype(np.float32), read_volume(real).astype(np.float32)
    zs = surface_depth(size, size, seed=seed)
    rows, cols = np.indices(zs.shape)
    surface = np.clip(np.round(zs + 0.5).astype(int), 0, 64)
    at_surface = lambda v: v[surface, rows, cols]  # noqa: E731
    inside = mask & strokes
    assert (at_surface(real_volume) - at_surface(clean_volume))[inside].std() > 0

    # Thickness varies: the sheet's back face moves while its front does not.
    thick = make_fragment(tmp_path / "thick", size, size, seed=seed, realism=Realism(thickness_variation=0.6))
    bright = (read_volume(thick)[:, mask] > read_volume(clean)[:, mask].mean(axis=0).min()).sum(axis=0)
    plain_bright = (clean_volume[:, mask] > clean_volume[:, mask].mean(axis=0).min()).sum(axis=0)
    assert bright.std() > plain_bright.std()


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"ink_presence": 0.0}, "ink_presence"),
        ({"label_dilation": -1}, "label_dilation"),
        ({"thickness_variation": 1.5}, "thickness_variation"),
        ({"ink_displacement": 9.0}, "ink_displacement"),
    ],
)
def test_realism_rejects_bad_knobs(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        Realism(**kwargs)


def test_faint_regime_cli_and_ink_below_the_noise(tmp_path: Path) -> None:
    from scripts.make_synthetic import main

    (fragment,) = main(["--out", str(tmp_path), "--height", "160", "--width", "160", "--faint", "--seed", "2"])
    assert best_single_slice_f05(fragment, (15, 45)) < 0.35
    assert synthetic_generator.FAINT_INK_CONTRAST < synthetic_generator._NOISE_SIGMA
