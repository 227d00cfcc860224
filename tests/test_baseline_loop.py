"""The benchmark's plain baseline loop: builds, trains on tiny fragments, and learns obvious ink."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from benchmarks.baseline_loop import UNet, bce_dice_loss, train_and_predict
from tests.test_baseline_data import write_bright_ink_fragment


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


def test_train_and_predict_learns_bright_ink(tmp_path: Path) -> None:
    ink = {fid: write_bright_ink_fragment(tmp_path / fid, seed=i) for i, fid in enumerate(("a", "b"))}
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
