"""LatestCheckpoint: a ModelCheckpoint whose ``last.ckpt`` always holds the latest state, so resuming loses nothing."""

from __future__ import annotations

from pytorch_lightning import LightningModule, Trainer
from pytorch_lightning.callbacks import ModelCheckpoint


class LatestCheckpoint(ModelCheckpoint):
    """ModelCheckpoint whose ``last.ckpt`` is the latest state at every save point, so ``--ckpt_path last`` resumes.

    Since Lightning 2.5, ``save_last=True`` rewrites ``last.ckpt`` only when a top-k checkpoint is saved, that is,
    when the monitored score improved: resuming would silently lose the epochs after the best one.
    """

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
