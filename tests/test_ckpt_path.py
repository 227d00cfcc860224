"""lightning_app/ckpt_path.py: another model's checkpoint is refused in one line."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from lightning_app.ckpt_path import check_checkpoint_matches


class Tiny(nn.Module):
    def __init__(self, width: int = 3, num_slices: int = 4) -> None:
        super().__init__()
        self.conv = nn.Conv2d(num_slices, width, 1)
        self.hparams = {"num_slices": num_slices, "depth_pool": "mean"}


def _save(path: Path, model: Tiny, **hparams: object) -> Path:
    torch.save({"state_dict": model.state_dict(), "hyper_parameters": {**model.hparams, **hparams}}, path)
    return path


def test_check_checkpoint_matches(tmp_path: Path) -> None:
    model = Tiny()
    check_checkpoint_matches(_save(tmp_path / "same.ckpt", model), model)
    with pytest.raises(ValueError, match=r"belongs to another model.*reshaped.*conv.weight"):
        check_checkpoint_matches(_save(tmp_path / "wide.ckpt", Tiny(width=5)), model)
    with pytest.raises(ValueError, match=r"belongs to another model.*depth_pool='max'.*depth_pool='mean'"):
        check_checkpoint_matches(_save(tmp_path / "pool.ckpt", model, depth_pool="max"), model)
    with pytest.raises(ValueError, match=r"num_slices=6, this run has num_slices=4; the slice window data.z_start"):
        check_checkpoint_matches(_save(tmp_path / "deep.ckpt", model, num_slices=6), model)
    torch.save({"weights": model.state_dict()}, tmp_path / "bare.pt")
    with pytest.raises(ValueError, match="not a Lightning checkpoint"):
        check_checkpoint_matches(tmp_path / "bare.pt", model)
