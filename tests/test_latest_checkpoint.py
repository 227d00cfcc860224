"""callbacks/latest_checkpoint.py: last.ckpt follows the latest epoch even when no better score is saved."""

from __future__ import annotations

from pathlib import Path

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from callbacks.latest_checkpoint import LatestCheckpoint
from utils.checkpoints import load_checkpoint


class Worsening(pl.LightningModule):
    """A linear model whose logged score is best at epoch 0 and worse every epoch after."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(2, 1)

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        return self.layer(batch).pow(2).mean()

    def validation_step(self, batch: torch.Tensor, batch_idx: int) -> None:
        self.log("score", -float(self.current_epoch))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.01)


def test_last_checkpoint_holds_the_latest_epoch_when_no_best_is_saved(tmp_path: Path) -> None:
    checkpoint = LatestCheckpoint(dirpath=tmp_path, monitor="score", mode="max", save_last=True)
    data = DataLoader(torch.rand(4, 2), batch_size=2)
    trainer = pl.Trainer(
        default_root_dir=tmp_path, max_epochs=3, accelerator="cpu", logger=False, callbacks=[checkpoint],
        enable_progress_bar=False, enable_model_summary=False,
    )  # fmt: skip
    trainer.fit(Worsening(), data, data)
    assert Path(checkpoint.best_model_path).name.startswith("epoch=0")
    last = load_checkpoint(tmp_path / "last.ckpt")
    assert (last["epoch"], last["global_step"]) == (2, 6)
