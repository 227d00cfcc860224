"""Learning-rate schedules stepped once per optimizer step."""

from __future__ import annotations

import math
from collections.abc import Callable

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

from utils.checks import check_range


def check_warmup_fraction(warmup_fraction: float) -> None:
    """Raises ValueError unless the share of the run spent warming up is in [0, 1)."""
    check_range("warmup_fraction", warmup_fraction, 0.0, 1.0, high_open=True)


def warmup_cosine_factor(total_steps: int, warmup_steps: int, min_lr_ratio: float = 0.0) -> Callable[[int], float]:
    """The factor of step s: linear from 1/warmup_steps to 1 over the warm-up, then cosine down to `min_lr_ratio`."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min((step - warmup_steps) / max(total_steps - warmup_steps, 1), 1.0)
        return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


def build_warmup_cosine(
    optimizer: Optimizer, total_steps: int, warmup_fraction: float = 0.05, min_lr_ratio: float = 0.0
) -> LambdaLR:
    """Linear warm-up over `warmup_fraction` of `total_steps`, then cosine decay; scales every group's lr.

    Args:
        optimizer: the optimizer (its groups' ``lr`` are the peak rates).
        total_steps: optimizer steps of the whole run (``trainer.estimated_stepping_batches``).
        warmup_fraction: share of the steps spent warming up, in [0, 1).
        min_lr_ratio: final lr as a fraction of the peak, in [0, 1].

    Returns:
        A LambdaLR to step once per optimizer step (Lightning ``interval: "step"``).
    """
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps}")
    check_warmup_fraction(warmup_fraction)
    check_range("min_lr_ratio", min_lr_ratio, 0.0, 1.0)
    warmup_steps = int(round(warmup_fraction * total_steps))
    return LambdaLR(optimizer, warmup_cosine_factor(total_steps, warmup_steps, min_lr_ratio))


def progress_factor(progress: float, warmup_fraction: float = 0.05, min_lr_ratio: float = 0.0) -> float:
    """The warm-up + cosine factor at `progress` in [0, 1] of the run (a time budget, or steps).

    Linear from 1 % of the peak to the peak over the first `warmup_fraction`, then cosine down to `min_lr_ratio`.
    """
    progress = min(max(progress, 0.0), 1.0)
    if progress < warmup_fraction:
        return max(progress / warmup_fraction, 0.01)
    rest = (progress - warmup_fraction) / max(1.0 - warmup_fraction, 1e-12)
    return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * rest))


def build_budget_cosine(
    optimizer: Optimizer, progress: Callable[[int], float], warmup_fraction: float = 0.05, min_lr_ratio: float = 0.0
) -> LambdaLR:
    """Warm-up + cosine over a run whose length is a budget (``trainer.max_time``) rather than a step count.

    Args:
        optimizer: the optimizer (its groups' ``lr`` are the peak rates).
        progress: the share of the run done after a given optimizer step, in [0, 1].
        warmup_fraction: share of the run spent warming up, in [0, 1).
        min_lr_ratio: final lr as a fraction of the peak, in [0, 1].
    """
    check_warmup_fraction(warmup_fraction)
    return LambdaLR(optimizer, lambda step: progress_factor(progress(step), warmup_fraction, min_lr_ratio))
