"""lightning_app/ckpt_path.py: ``--ckpt_path last`` finds the newest last.ckpt; another model's file is refused."""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from lightning_app.ckpt_path import check_checkpoint_matches, find_last_checkpoint


class Tiny(nn.Module):
    def __init__(self, width: int = 3, num_slices: int = 4) -> None:
        super().__init__()
        self.conv = nn.Conv2d(num_slices, width, 1)
        self.hparams = {"num_slices": num_slices, "depth_pool": "mean"}


def _save(path: Path, model: Tiny, **hparams: object) -> Path:
    torch.save({"state_dict": model.state_dict(), "hyper_parameters": {**model.hparams, **hparams}}, path)
    return path


def test_find_last_checkpoint_takes_the_newest_under_the_logger_folder(tmp_path: Path) -> None:
    trainer = SimpleNamespace(logger=SimpleNamespace(save_dir=str(tmp_path), name="ink"), default_root_dir="unused")
    with pytest.raises(FileNotFoundError, match="ckpt_path 'last': no last.ckpt under"):
        find_last_checkpoint(trainer)
    for i, version in enumerate(["version_1", "version_0"]):
        folder = tmp_path / "ink" / version / "checkpoints"
        folder.mkdir(parents=True)
        (folder / "last.ckpt").write_bytes(b"")
        os.utime(folder / "last.ckpt", (1000 + i, 1000 + i))
    assert find_last_checkpoint(trainer) == tmp_path / "ink" / "version_0" / "checkpoints" / "last.ckpt"
    no_logger = SimpleNamespace(logger=None, default_root_dir=str(tmp_path / "ink" / "version_1"))
    assert find_last_checkpoint(no_logger).parent.parent.name == "version_1"


def test_check_checkpoint_matches(tmp_path: Path) -> None:
    model = Tiny()
    check_checkpoint_matches(_save(tmp_path / "same.ckpt", model), model)
    with pytest.raises(ValueError, match=r"belongs to another model.*reshaped.*conv.weight"):
        check_checkpoint_matches(_save(tmp_path / "wide.ckpt", Tiny(width=5)), model)
    with pytest.raises(ValueError, match=r"belongs to another model.*depth_pool='max'.*depth_pool='mean'"):
        check_checkpoint_matches(_save(tmp_path / "pool.ckpt", model, depth_pool="max"), model)
    torch.save({"weights": model.state_dict()}, tmp_path / "bare.pt")
    with pytest.raises(ValueError, match="not a Lightning checkpoint"):
        check_checkpoint_matches(tmp_path / "bare.pt", model)
