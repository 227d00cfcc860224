"""The training loss, BCE with logits + soft Dice over valid pixels in float32, and `LossConfig`, its settings.

A new loss term is a `LossConfig` field (described and checked there, hence ``--model.loss.<name>``) and a term in
`InkLoss.forward`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from utils.checks import check_int, check_non_negative, check_range


def ink_boundary(label: Tensor, width: int, valid: Tensor | None = None) -> Tensor:
    """1 where a pixel lies within `width` px (Chebyshev distance) of an ink boundary, else 0.

    A boundary needs valid pixels on both sides: valid ink and valid non-ink within the window. Edges of the
    papyrus mask, of ignored pixels and of an affine warp's fill are not ink boundaries, even where ink meets them.

    Args:
        label: [B, 1, H, W] ink labels in [0, 1].
        width: boundary half-width in pixels (>= 1).
        valid: [B, 1, H, W], 1 where the label is known; None: everywhere.
    """
    ink = (label > 0.5).float()
    known = torch.ones_like(ink) if valid is None else (valid > 0.5).float()
    k = 2 * width + 1
    near_ink = F.max_pool2d(ink * known, k, stride=1, padding=width)
    near_background = F.max_pool2d((1.0 - ink) * known, k, stride=1, padding=width)
    return near_ink * near_background


@dataclass
class LossConfig:
    """The training loss's settings (``--model.loss.*``), checked when built.

    Attributes:
        pos_weight: BCE weight of ink pixels (> 0); > 1 penalises missed ink more.
        bce_weight: Weight of the BCE term (>= 0).
        dice_weight: Weight of the Dice term (>= 0; not both weights 0).
        label_smoothing: BCE label smoothing s in [0, 1): targets ``t·(1 − s) + s/2``.
        edge_weight: Extra BCE weight of pixels within `edge_width` px of an ink boundary (>= 0).
        edge_width: Half-width of the boundary band in pixels (>= 1).
        aux_weight: Weight of the mean deep-supervision loss added to the main loss (>= 0; used with
            ``net.deep_supervision``).
    """

    pos_weight: float = 1.0
    bce_weight: float = 0.5
    dice_weight: float = 0.5
    label_smoothing: float = 0.0
    edge_weight: float = 0.0
    edge_width: int = 3
    aux_weight: float = 0.4

    def __post_init__(self) -> None:
        """Rejects weights that would make the loss meaningless or fail on the first batch."""
        if not (self.pos_weight > 0 and math.isfinite(self.pos_weight)):
            raise ValueError(f"pos_weight must be a positive number, got {self.pos_weight}")
        bce, dice = self.bce_weight, self.dice_weight
        if bce < 0 or dice < 0 or bce + dice <= 0:
            raise ValueError(f"bce_weight ({bce}) and dice_weight ({dice}) must be >= 0 and not both 0")
        check_range("label_smoothing", self.label_smoothing, 0.0, 1.0, high_open=True)
        check_non_negative("edge_weight", self.edge_weight)
        check_int("edge_width", self.edge_width, minimum=1)
        check_non_negative("aux_weight", self.aux_weight)


class InkLoss(nn.Module):
    """``bce_weight × BCE + dice_weight × (1 − soft Dice)``, on valid pixels only.

    - BCE uses `pos_weight` (a buffer: saved in the state dict, moved by ``.to()``) and, when
      `label_smoothing` s > 0, smoothed targets.
    - `edge_weight` > 0 weighs the BCE of pixels within `edge_width` px of an ink boundary by
      ``1 + edge_weight`` (the BCE is the weighted mean over valid pixels).
    - Dice is one soft Dice over all valid pixels of the batch (tiles without ink do not produce 0/0),
      against the unsmoothed labels.
    - A per-tile ``weight`` (a pseudo-labelled segment's tiles weigh less than labelled ones) scales each tile's
      pixels: in the BCE sum (still divided by the count of valid pixels, so a batch of pseudo-labels alone weighs
      less in absolute terms, not only relative to labelled tiles), and in the Dice sums, whose term is then
      scaled by the mean weight of the valid pixels.
    - Everything runs in float32 with autocast disabled, so bf16/fp16 training cannot underflow the loss.

    The loss does not check for NaN/inf itself; `InkModule.training_step` does (see `check_finite`). Deep
    supervision (``aux_weight``) is the module's: it applies this loss to each auxiliary output.

    Args:
        config: The weights and their meaning (`LossConfig`); None: the defaults.
        smooth: Additive smoothing of the Dice ratio (> 0).
    """

    pos_weight: Tensor

    def __init__(self, config: LossConfig | None = None, smooth: float = 1.0) -> None:
        super().__init__()
        config = LossConfig() if config is None else config
        check_range("smooth", smooth, 0.0, low_open=True)
        self.register_buffer("pos_weight", torch.tensor([float(config.pos_weight)]))
        self.bce_weight = config.bce_weight
        self.dice_weight = config.dice_weight
        self.label_smoothing = config.label_smoothing
        self.edge_weight = config.edge_weight
        self.edge_width = config.edge_width
        self.smooth = smooth

    def forward(
        self, logits: Tensor, target: Tensor, valid: Tensor | None = None, weight: Tensor | None = None
    ) -> Tensor:
        """The scalar loss of logits [B, 1, H, W] against labels [B, 1, H, W] on `valid` pixels (1 = scored),
        each tile weighted by ``weight`` [B] (None: all 1)."""
        if logits.shape != target.shape:
            raise ValueError(f"InkLoss: logits {list(logits.shape)} and labels {list(target.shape)} differ in shape")
        if valid is not None and valid.shape != target.shape:
            raise ValueError(f"InkLoss: valid mask {list(valid.shape)} and labels {list(target.shape)} differ")
        if weight is not None and weight.shape != target.shape[:1]:
            raise ValueError(f"InkLoss: tile weights {list(weight.shape)} for {target.shape[0]} tiles; expected [B]")
        with torch.autocast(device_type=logits.device.type, enabled=False):
            logits = logits.float()
            target = target.float()
            mask = torch.ones_like(target) if valid is None else (valid > 0.5).float()
            # Pixels outside the mask must not leak NaN/inf from labels or logits into the sums.
            logits = torch.where(mask > 0, logits, torch.zeros_like(logits))
            target = torch.where(mask > 0, target, torch.zeros_like(target))
            tiles = None if weight is None else weight.float().reshape(-1, 1, 1, 1).expand_as(mask)
            loss = logits.new_zeros(())
            if self.bce_weight > 0:
                loss = loss + self.bce_weight * self._bce(logits, target, mask, tiles)
            if self.dice_weight > 0:
                loss = loss + self.dice_weight * self._dice(logits, target, mask, tiles)
        return loss

    def _bce(self, logits: Tensor, target: Tensor, mask: Tensor, tiles: Tensor | None) -> Tensor:
        s = self.label_smoothing
        smoothed = target * (1.0 - s) + s / 2.0 if s > 0 else target
        per_pixel = F.binary_cross_entropy_with_logits(
            logits, smoothed, pos_weight=self.pos_weight.float(), reduction="none"
        )
        weight = mask
        if self.edge_weight > 0:
            weight = mask * (1.0 + self.edge_weight * ink_boundary(target, self.edge_width, mask))
        scaled = weight if tiles is None else weight * tiles
        # No valid pixel: a zero that still depends on the logits, so backward works.
        return (per_pixel * scaled).sum() / weight.sum().clamp_min(1.0)

    def _dice(self, logits: Tensor, target: Tensor, mask: Tensor, tiles: Tensor | None) -> Tensor:
        weight = mask if tiles is None else mask * tiles
        prob = torch.sigmoid(logits) * weight
        truth = target * weight
        intersection = (prob * truth).sum()
        dice = 1.0 - (2.0 * intersection + self.smooth) / (prob.sum() + truth.sum() + self.smooth)
        if tiles is None:
            return dice
        return dice * weight.sum() / mask.sum().clamp_min(1.0)


def check_finite(loss: Tensor, name: str, step: int) -> None:
    """Raises FloatingPointError if `loss` is NaN or infinite, naming the loss and the step.

    Args:
        loss: a scalar loss.
        name: the logged name of the loss, e.g. ``train/loss``.
        step: the global optimizer step.
    """
    if not torch.isfinite(loss.detach()).all():
        raise FloatingPointError(
            f"{name} is {loss.detach().float().item()} at global step {step}: training diverged. "
            "Lower the learning rate (model.optim.lr), clip gradients (trainer.gradient_clip_val), "
            "or use bf16 instead of fp16 mixed precision (trainer.precision=bf16-mixed)."
        )
