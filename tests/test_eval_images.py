"""EvalImageLogger (callbacks/eval_images.py): images to TensorBoard and PNG files, not in the sanity check."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from PIL import Image
from pytorch_lightning.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch.utils.data import DataLoader

from callbacks.eval_images import EvalImageLogger

SHAPE = (300, 500)


class StandIn(pl.LightningModule):
    """Trains one weight and sets `last_eval_maps` in its validation-epoch-end hook, as InkModule does."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.last_eval_maps: dict[str, dict[str, np.ndarray]] = {}
        self.last_eval_stage: str | None = None
        self.epoch_ends = 0

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        return (self.weight - batch.mean()) ** 2

    def validation_step(self, batch: torch.Tensor, batch_idx: int) -> None:
        pass

    def on_validation_epoch_end(self) -> None:
        self.epoch_ends += 1
        prob = np.zeros(SHAPE, dtype=np.float32)
        prob[:, :250] = 1.0
        label = np.zeros(SHAPE, dtype=np.uint8)
        label[150:] = 1
        self.last_eval_maps = {
            "frag_a": {"prob": prob, "valid": np.ones(SHAPE, bool), "label": label},
            "b": {"prob": prob[:40, :30], "valid": np.ones((40, 30), bool), "label": label[:40, :30]},
        }
        self.last_eval_stage = "validate"

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _fit(tmp_path: Path, callback: EvalImageLogger) -> tuple[StandIn, TensorBoardLogger]:
    module = StandIn()
    logger = TensorBoardLogger(str(tmp_path), name="run")
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=2,
        logger=logger,
        callbacks=[callback],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=1,
        log_every_n_steps=1,
    )
    loader = DataLoader(torch.arange(4.0), batch_size=2)
    trainer.fit(module, train_dataloaders=loader, val_dataloaders=loader)
    return module, logger


def test_max_size_is_checked() -> None:
    with pytest.raises(ValueError, match="max_size"):
        EvalImageLogger(max_size=4)


def test_logs_each_validation_epoch_to_tensorboard_and_png_but_not_the_sanity_check(tmp_path: Path) -> None:
    callback = EvalImageLogger(max_size=128)
    module, logger = _fit(tmp_path, callback)
    assert module.epoch_ends == 3  # sanity check + 2 epochs

    folder = Path(logger.log_dir) / "val_images"
    names = sorted(p.name for p in folder.iterdir())
    assert names == ["epoch000_b.png", "epoch000_frag_a.png", "epoch001_b.png", "epoch001_frag_a.png"]
    assert sorted(callback.last_paths) == [folder / "epoch001_b.png", folder / "epoch001_frag_a.png"]
    with Image.open(folder / "epoch001_frag_a.png") as png:
        image = np.array(png)
    assert png.mode == "L" and max(image.shape) <= 128
    assert image.shape == (int(np.ceil(300 / 8)), 2 * int(np.ceil(500 / 8)) + 2)
    half = image.shape[1] // 2 - 1
    # Left panel: prob 1 on its left half; right panel: label 1 on its bottom half.
    assert image[:, : half // 2 - 1].min() == 255 and image[:, half // 2 + 1 : half].max() == 0
    assert image[:17, half + 2 :].max() == 0 and image[20:, half + 2 :].min() == 255
    with Image.open(folder / "epoch000_b.png") as png:
        assert np.array(png).shape == (40, 62)

    events = EventAccumulator(logger.log_dir, size_guidance={"images": 0})
    events.Reload()
    assert {"val/frag_a", "val/b"} <= set(events.Tags()["images"])
    logged = events.Images("val/frag_a")
    assert len(logged) == 2
    assert (logged[-1].height, logged[-1].width) == image.shape


def test_png_saving_can_be_switched_off(tmp_path: Path) -> None:
    callback = EvalImageLogger(max_size=64, save_png=False)
    _, logger = _fit(tmp_path, callback)
    assert not (Path(logger.log_dir) / "val_images").exists() and callback.last_paths == []
    events = EventAccumulator(logger.log_dir, size_guidance={"images": 0})
    events.Reload()
    assert len(events.Images("val/b")) == 2
