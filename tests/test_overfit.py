"""A tiny model overfits a tiny synthetic fragment: the whole data → model → stitching → F0.5 path can learn."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch

from datamodules.augment.transforms import AugmentConfig
from datamodules.ink_datamodule import InkDataModule
from datamodules.synthetic import make_fragment
from modules.components.ink_net import NetConfig
from modules.ink_module import InkModule
from modules.losses import LossConfig
from modules.optimization import OptimConfig


@pytest.mark.slow
def test_tiny_model_overfits_a_tiny_fragment_to_f05_above_0_9(tmp_path: Path):
    pl.seed_everything(0, workers=True)
    torch.set_num_threads(2)
    make_fragment(tmp_path / "data" / "a", 64, 64, depth=24, seed=1, surface_z=11.0, ink_contrast=0.25)
    # the same fragment under a second name, so validation scores the very pixels the model trains on
    os.symlink(tmp_path / "data" / "a", tmp_path / "data" / "a_again")
    data = InkDataModule(
        data_dir=str(tmp_path / "data"),
        train_fragments=["a"],
        val_fragments=["a_again"],
        z_start=4,
        z_end=20,
        tile_size=32,
        stride=16,
        eval_stride=16,
        min_valid_fraction=0.0,
        samples_per_epoch=64,
        batch_size=16,
        num_workers=0,
        augment=AugmentConfig(enabled=False),
        jitter=False,
    )
    model = InkModule(
        num_slices=data.num_slices,
        net=NetConfig(encoder="resnet10t", decoder_channels=[64, 32, 16, 16]),
        loss=LossConfig(pos_weight=1.0),
        optim=OptimConfig(lr=3e-3, warmup_fraction=0.0),
    )
    trainer = pl.Trainer(
        accelerator="cpu",
        max_epochs=40,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        check_val_every_n_epoch=40,
    )
    trainer.fit(model, datamodule=data)
    assert trainer.callback_metrics["val/f05"] > 0.9
