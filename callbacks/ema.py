"""InkEMA: an exponential moving average of the weights, used for validation, checkpoints and prediction.

The winners of the ink-detection competition kept an EMA of the weights (decay 0.99-0.9998): on faint, noisily
labelled ink the raw weights jump from step to step, and the average predicts more steadily. This is Lightning's
own `EMAWeightAveraging` with the project's defaults, off unless ``enabled``: in the CPU recipe's short,
time-budgeted runs the average lagged behind fast-improving weights (test F0.5 on unseen faint fragments 0.891
and 0.802 with decay 0.99, against 0.900 and 0.865 without, two seeds), so it is for long runs.

When on, validation during fit runs on the averaged weights, every checkpoint's ``state_dict`` holds them (the
raw weights go under ``current_model_state``, so a resumed run continues exactly), and at the end of fitting the
model keeps the average. Testing or predicting from such a checkpoint therefore uses the averaged weights with no
callback at all.
"""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import EMAWeightAveraging
from pytorch_lightning.trainer.states import TrainerFn

from utils.checks import check_range


class InkEMA(EMAWeightAveraging):
    """EMA of the weights (and BatchNorm statistics), updated after every optimizer step.

    Args:
        enabled: keep the average (off: the callback does nothing).
        decay: weight of the running average per update, in [0, 1); 0.99 averages over about the last 100
            steps, 0.999 over about 1,000.
        update_starting_at_step: first optimizer step that updates the average (earlier weights are copied).
        update_every_n_steps: update the average every n optimizer steps.
    """

    def __init__(
        self,
        enabled: bool = False,
        decay: float = 0.999,
        update_starting_at_step: int = 0,
        update_every_n_steps: int = 1,
    ) -> None:
        check_range("ema decay", decay, 0.0, 1.0, high_open=True)
        check_range("ema update_starting_at_step", update_starting_at_step, 0)
        check_range("ema update_every_n_steps", update_every_n_steps, 1)
        super().__init__(
            decay=decay, update_starting_at_step=update_starting_at_step, update_every_n_steps=update_every_n_steps
        )
        self.decay = decay
        self.enabled = enabled

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Creates the averaged copy of the model when fitting with the average enabled."""
        if self.enabled:
            super().setup(trainer, pl_module, stage)

    def should_update(self, step_idx: int | None = None, epoch_idx: int | None = None) -> bool:
        """Never when disabled; otherwise Lightning's schedule (every n steps from the starting step)."""
        return self.enabled and super().should_update(step_idx, epoch_idx)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Leaves the averaged weights in the model (when enabled)."""
        if self._average_model is not None:
            super().on_train_end(trainer, pl_module)

    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        """Saves the averaged weights as ``state_dict`` while fitting; outside fit the model already holds them."""
        if self._average_model is not None and trainer.state.fn == TrainerFn.FITTING:
            super().on_save_checkpoint(trainer, pl_module, checkpoint)

    def on_load_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        """Restores the average when resuming a fit; testing or predicting uses the saved averaged weights as is.

        (The test after fitting runs on the same Trainer, whose average still exists: it must not swap the raw
        weights back in.)
        """
        if self._average_model is not None and trainer.state.fn == TrainerFn.FITTING:
            super().on_load_checkpoint(trainer, pl_module, checkpoint)
