"""The benchmark's plain baseline loop: builds, trains on tiny fragments, and learns obvious ink."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image

from benchmarks.baseline_loop import UNet, bce_dice_loss, load_fragment, train_and_predict


def _make_fragment(root: Path, seed: int, size: int = 128, depth: int = 40) -> np.ndarray:
    """Writes a fragment with bright ink discs in slices 28-32; returns its bool ink labels."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    ink = np.zeros((size, size), dtype=bool)
    for _ in range(4):
        cy, cx = rng.integers(16, size - 16, size=2)
        ink |= (yy - cy) ** 2 + (xx - cx) ** 2 <= int(rng.integers(6, 12)) ** 2
    volume = rng.normal(20000, 1500, size=(depth, size, size))
    volume[28:33][:, ink] += 25000
    slices = root / "surface_volume"
    slices.mkdir(parents=True)
    for z, image in enumerate(np.clip(volume, 0, 65535).astype(np.uint16)):
        tifffile.imwrite(slices / f"{z:02d}.tif", image)
    mask = np.zeros((size, size), dtype=np.uint8)
    mask[4:-4, 4:-4] = 255
    Image.fromarray(mask).save(root / "mask.png")
    Image.fromarray(ink.astype(np.uint8) * 255).save(root / "inklabels.png")
    return ink


def test_unet_matches_smp_layout() -> None:
    model = UNet(in_chans=16)
    # smp.Unet("resnet18", in_channels=16, classes=1) has 14,368,977 parameters.
    assert sum(p.numel() for p in model.parameters()) == 14_368_977
    assert model(torch.zeros(2, 16, 64, 64)).shape == (2, 1, 64, 64)


def test_dice_part_vanishes_without_positives() -> None:
    logits = torch.full((2, 1, 8, 8), -3.0)
    target = torch.zeros_like(logits)
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, target)
    assert torch.allclose(bce_dice_loss(logits, target), 0.5 * bce)


def test_load_fragment_reads_top_byte_hwc(tmp_path: Path) -> None:
    _make_fragment(tmp_path / "a", seed=0, size=64, depth=40)
    frag = load_fragment(tmp_path / "a", 22, 38)
    expected = tifffile.imread(tmp_path / "a" / "surface_volume" / "30.tif") >> 8
    assert frag.image.shape == (64, 64, 16) and frag.image.dtype == np.uint8
    np.testing.assert_array_equal(frag.image[..., 8], expected)
    with pytest.raises(ValueError):
        load_fragment(tmp_path / "a", 30, 41)


def test_train_and_predict_learns_bright_ink(tmp_path: Path) -> None:
    ink = {fid: _make_fragment(tmp_path / fid, seed=i) for i, fid in enumerate(("a", "b"))}
    messages: list[str] = []
    info: dict[str, float] = {}
    # Batch 8 rather than 16: twice the steps in the budget on a busy 1-thread CPU (~20 vs ~12).
    maps = train_and_predict(
        tmp_path, ["a", "b"], ["a", "b"], seed=0, budget_s=12.0, batch_size=8, threads=1, log=messages.append, info=info
    )
    assert set(maps) == {"a", "b"}
    for fid, entry in maps.items():
        prob = entry["prob"]
        assert prob.shape == (128, 128) and prob.dtype == np.float32
        assert np.isfinite(prob).all() and prob.min() >= 0.0 and prob.max() <= 1.0
        assert entry["valid"].dtype == bool and entry["valid"].sum() == 120 * 120
        np.testing.assert_array_equal(entry["label"], ink[fid])
    assert info["steps"] >= 1 and np.isfinite(info["final_loss"])
    assert any("trained" in m for m in messages)
    a = maps["a"]
    inside = a["valid"]
    assert a["prob"][a["label"] & inside].mean() > a["prob"][~a["label"] & inside].mean() + 0.05
