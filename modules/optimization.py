"""Optimisation: `OptimConfig` (``--model.optim.*``) and the optimizer + LR schedule InkModule hands Lightning.

The optimizer and scheduler classes are the module's ``optimizer``/``scheduler`` callables (LightningCLI's
``--model.optimizer``/``--model.scheduler``); what they are given (named parameter groups with layer-wise learning
rates, the default warm-up + cosine schedule that follows a step count or a time budget) is decided here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Timer
from pytorch_lightning.cli import LRSchedulerCallable, OptimizerCallable
from torch.optim.lr_scheduler import ReduceLROnPlateau

from modules.param_groups import build_param_groups, check_lr_settings
from modules.schedulers import build_budget_cosine, build_warmup_cosine, check_warmup_fraction
from utils.checks import check_int


@dataclass
class OptimConfig:
    """Learning rates, weight decay and the schedule of training (``--model.optim.*``), checked when built.

    Attributes:
        lr: Peak learning rate of head and decoder (> 0).
        weight_decay: Weight decay (>= 0), never on biases and norm parameters.
        layer_decay: Per-stage learning-rate factor down the encoder, in (0, 1] (1: no decay).
        warmup_fraction: Share of the run spent warming up, in [0, 1) (the default scheduler: linear warm-up, then
            cosine, stepped every optimizer step).
        freeze_encoder_epochs: Train with a frozen encoder backbone (no grads, BatchNorm in eval mode) for this many
            epochs first (>= 0).
    """

    lr: float = 1e-3
    weight_decay: float = 1e-2
    layer_decay: float = 1.0
    warmup_fraction: float = 0.05
    freeze_encoder_epochs: int = 0

    def __post_init__(self) -> None:
        """Fails at construction, not after the first epoch, on settings the optimizer would reject."""
        check_lr_settings(self.lr, self.weight_decay, self.layer_decay)
        check_warmup_fraction(self.warmup_fraction)
        check_int("freeze_encoder_epochs", self.freeze_encoder_epochs, minimum=0)


def configure_optimization(
    module: pl.LightningModule,
    config: OptimConfig,
    optimizer: OptimizerCallable,
    scheduler: LRSchedulerCallable | None,
) -> dict[str, Any]:
    """Lightning's ``configure_optimizers`` result: the optimizer over named parameter groups and its scheduler.

    Args:
        module: the LightningModule: its ``net`` (split into named groups by `build_param_groups`), its Trainer
            (step estimate, ``max_time`` timer) and its device (where the ranks' clocks are compared under DDP).
        config: learning rates, weight decay and warm-up.
        optimizer: builds the optimizer from the groups (their lr and weight decay override its defaults).
        scheduler: builds an LR scheduler from the optimizer; None: linear warm-up over ``warmup_fraction`` of the
            run, then cosine, stepped every optimizer step; the run is the Trainer's step count, or its
            ``max_time`` budget when it has one.

    Raises:
        ValueError: the default schedule and a run with no end (no max_time, max_epochs or max_steps).
    """
    opt = optimizer(build_param_groups(module.net, config.lr, config.weight_decay, config.layer_decay))
    if scheduler is not None:
        sched = scheduler(opt)
        if isinstance(sched, ReduceLROnPlateau):
            lr_config = {"scheduler": sched, "interval": "epoch", "monitor": "val/loss"}
        else:
            lr_config = {"scheduler": sched, "interval": "step"}
    else:
        total = module.trainer.estimated_stepping_batches
        budget = _time_budget(module.trainer)
        if budget is not None:
            # The run ends at max_time (or max_steps, whichever comes first): the schedule follows the budget.
            steps = int(total) if math.isfinite(total) and total >= 1 else None
            sched = build_budget_cosine(
                opt, lambda step: _budget_progress(module, step, steps, budget), config.warmup_fraction
            )
        elif math.isfinite(total) and total >= 1:
            sched = build_warmup_cosine(opt, int(total), config.warmup_fraction)
        else:
            raise ValueError(
                f"the warm-up + cosine schedule needs a finite run, got {total} steps: "
                "set trainer.max_time, trainer.max_epochs or trainer.max_steps"
            )
        lr_config = {"scheduler": sched, "interval": "step"}
    return {"optimizer": opt, "lr_scheduler": {**lr_config, "frequency": 1, "name": "lr"}}


def _budget_progress(module: pl.LightningModule, step: int, steps: int | None, budget: Timer) -> float:
    """Share of the run done: the larger of steps taken / max_steps and time spent / max_time.

    Under DDP the ranks agree on the slowest clock, so every rank applies the same learning rate.
    """
    progress = step / steps if steps else 0.0
    elapsed = budget.time_elapsed("train") / float(budget._duration)
    trainer = module._trainer
    if trainer is not None and getattr(trainer, "world_size", 1) > 1:
        elapsed = float(trainer.strategy.reduce(torch.tensor(elapsed, device=module.device), reduce_op="max"))
    return min(1.0, max(progress, elapsed))


def _time_budget(trainer: pl.Trainer) -> Timer | None:
    """The Trainer's ``max_time`` timer, if the run has a time budget."""
    for callback in getattr(trainer, "callbacks", None) or []:
        if isinstance(callback, Timer) and callback._duration is not None:
            return callback
    return None
