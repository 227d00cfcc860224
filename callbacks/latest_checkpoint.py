"""LatestCheckpoint: a ModelCheckpoint whose ``last.ckpt`` always holds the latest state, so resuming loses nothing."""

from __future__ import annotations

import os
from typing import Any

from pytorch_lightning import LightningModule, Trainer
from pytorch_lightning.callbacks import ModelCheckpoint


class LatestCheckpoint(ModelCheckpoint):
    """ModelCheckpoint whose ``last.ckpt`` is the latest state at every save point, so ``--ckpt_path last`` resumes.

    Since Lightning 2.5, ``save_last=True`` rewrites ``last.ckpt`` only when a top-k checkpoint is saved, that is,
    when the monitored score improved: resuming would silently lose the epochs after the best one.

    Its best-k state (best score and path, kth value, last path) is restored when a fit resumes in the same folder,
    whether the folder was written as an absolute or a relative path; validate, test and predict leave it alone.
    """

    _stage: str | None = None

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        self._stage = stage

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # Evaluation never reads the best-k state, and restoring it in another run folder only warns.
        if self._stage not in (None, "fit"):
            return
        saved = state_dict.get("dirpath")
        if saved and self.dirpath and os.path.realpath(saved) == os.path.realpath(self.dirpath):
            state_dict = {**state_dict, "dirpath": self.dirpath}  # Lightning compares the strings
        super().load_state_dict(state_dict)

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        if self._should_save_on_train_epoch_end(trainer):
            self._save_latest(trainer)

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        super().on_validation_end(trainer, pl_module)
        if not self._should_save_on_train_epoch_end(trainer):
            self._save_latest(trainer)

    def _save_latest(self, trainer: Trainer) -> None:
        # save_last="link" links to the newest top-k file by design; skipped when this step was already saved.
        if self.save_last is True and not self._should_skip_saving_checkpoint(trainer):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
