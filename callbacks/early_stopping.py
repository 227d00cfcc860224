"""InkEarlyStopping: early stopping whose patience is counted in training samples, not in validations.

An "epoch" here is ``data.samples_per_epoch`` tiles, the cadence of validation. A patience of 10 validations
means 5,120 tiles with epochs of 512 and 160,000 with epochs of 16,384: a patience in validations silently
changes meaning whenever the cadence does, and a short cadence stops a run long before it has learned. This
callback takes the patience in samples and converts it once the data module's epoch length is known.
"""

from __future__ import annotations

import math

import pytorch_lightning as pl
from pytorch_lightning.callbacks import EarlyStopping

from utils.checks import check_range
from utils.hparams import grouped_setting


class InkEarlyStopping(EarlyStopping):
    """Lightning's EarlyStopping with ``patience_samples``: stop after that many training tiles bring no gain.

    Args:
        monitor: the metric to watch.
        patience_samples: training tiles (all processes together) without improvement before stopping; None
            keeps ``patience`` (counted in validations).
        patience: validations without improvement before stopping, when ``patience_samples`` is None.
        mode: ``max`` or ``min``.
        min_delta: smallest change that counts as an improvement.
        check_on_train_epoch_end: check after the training epoch instead of after validation.
        verbose: log every decision.
    """

    def __init__(
        self,
        monitor: str = "val/f05_best",
        patience_samples: int | None = None,
        patience: int = 10,
        mode: str = "max",
        min_delta: float = 0.0,
        check_on_train_epoch_end: bool | None = False,
        verbose: bool = False,
    ) -> None:
        super().__init__(
            monitor=monitor,
            patience=patience,
            mode=mode,
            min_delta=min_delta,
            check_on_train_epoch_end=check_on_train_epoch_end,
            verbose=verbose,
        )
        if patience_samples is not None:
            check_range("early_stopping.patience_samples", patience_samples, 1)
        self.patience_samples = patience_samples

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Converts ``patience_samples`` into validations with the data module's ``samples_per_epoch``."""
        super().setup(trainer, pl_module, stage)
        if self.patience_samples is None:
            return
        datamodule = getattr(trainer, "datamodule", None)
        per_validation = grouped_setting(getattr(datamodule, "hparams", None), "tiles", "samples_per_epoch")
        if not per_validation:
            raise ValueError(
                "early_stopping.patience_samples needs a data module with samples_per_epoch (InkDataModule); "
                "set early_stopping.patience instead"
            )
        self.patience = max(1, math.ceil(self.patience_samples / int(per_validation)))
