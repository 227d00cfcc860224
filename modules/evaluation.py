"""Whole-fragment evaluation: `EvalConfig` (``--model.eval.*``), and the stitching and scoring InkModule runs.

The task's metric is F0.5 over whole fragments, so validation, test and prediction tiles are first turned into
probabilities (`modules.tta` when ``tta`` is on), blended into one map per fragment (`modules.stitching`), and only
then scored (`modules.metrics`). This file holds the settings of that path and the steps the LightningModule calls;
the module keeps the state callbacks read (``last_eval_maps``, ``val_threshold``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pytorch_lightning as pl
import torch
from torch import Tensor, nn

from modules.metrics import fragment_scores, overall_scores
from modules.stitching import FragmentStitcher, window_weights
from modules.tta import tta_predict
from utils.checks import check_int, check_threshold

# Lightning's stage names, as passed to `InkDataModule.fragment_shapes`, keyed by metric prefix.
EVAL_STAGES = {"val": "validate", "test": "test", "predict": "predict"}


@dataclass
class EvalConfig:
    """How validation, test and prediction tiles become scored fragment maps (``--model.eval.*``).

    Attributes:
        window: Stitching window: ``hann``, ``gaussian`` or ``uniform`` (see `window_weights`).
        stitch_stride: Stitched maps are kept at 1/stitch_stride resolution (memory of large fragments).
        tta: Average probabilities over the 8 flips/rotations at validation, test and prediction.
        threshold: Probability threshold of ``f05`` (and of the prediction writer's masks), in (0, 1).
    """

    window: str = "hann"
    stitch_stride: int = 1
    tta: bool = False
    threshold: float = 0.5

    def __post_init__(self) -> None:
        """Rejects settings at construction that would otherwise fail at the first validation."""
        check_threshold("threshold", self.threshold)
        check_int("stitch_stride", self.stitch_stride, minimum=1)
        window_weights(1, self.window)  # the stitcher's own check of the window kind


def eval_probabilities(net: nn.Module, image: Tensor, tta: bool) -> tuple[Tensor, Tensor]:
    """float32 ``(probabilities, logits)`` [B, 1, T, T] of an image batch, averaged over the 8 views with `tta`.

    With TTA the logits are those of the averaged probabilities, so the evaluation loss costs no extra forward pass.
    """
    if tta:
        probs = tta_predict(net, image, "flips+rot90")
        return probs, torch.logit(probs.clamp(1e-6, 1 - 1e-6))
    logits = net(image).float()
    return torch.sigmoid(logits), logits


def datamodule_tile_size(trainer: pl.Trainer) -> int | None:
    """The data module's tile size (attribute or hyperparameter); None if it does not say."""
    datamodule = getattr(trainer, "datamodule", None)
    size = getattr(datamodule, "tile_size", None)
    hparams = getattr(datamodule, "hparams", None)
    if size is None and isinstance(hparams, Mapping):
        size = hparams.get("tile_size")
    return int(size) if size is not None else None


def new_stitcher(
    trainer: pl.Trainer, prefix: str, tile_size: int | None, config: EvalConfig
) -> FragmentStitcher | None:
    """A stitcher over the data module's fragment shapes of the stage; None while the tile size is unknown.

    Raises:
        RuntimeError: the Trainer has no data module with ``fragment_shapes(stage)`` (bare dataloaders).
    """
    stage = EVAL_STAGES[prefix]
    datamodule = getattr(trainer, "datamodule", None)
    if datamodule is None or not callable(getattr(datamodule, "fragment_shapes", None)):
        raise RuntimeError(
            f"InkModule stitches {stage} tiles into whole fragments and needs a data module with "
            f"fragment_shapes('{stage}') (e.g. InkDataModule); got {type(datamodule).__name__}. "
            "Pass datamodule=..., not bare dataloaders."
        )
    if tile_size is None:
        return None
    return FragmentStitcher(
        datamodule.fragment_shapes(stage), tile_size, window=config.window, stride=config.stitch_stride
    )


def labelled_maps(maps: Mapping[str, dict[str, np.ndarray]]) -> dict[str, dict[str, np.ndarray]]:
    """The fragments that can be scored: with labels and at least one valid pixel."""
    return {fid: m for fid, m in maps.items() if "label" in m and m["valid"].any()}


def score_validation(labelled: Mapping[str, dict[str, np.ndarray]], threshold: float) -> dict[str, float]:
    """``val/f05`` (at `threshold`), ``val/f05_best`` and ``val/threshold`` (a sweep), ``val/ap``."""
    return {f"val/{k}": v for k, v in overall_scores(list(labelled.values()), threshold).items()}


def score_test(
    labelled: Mapping[str, dict[str, np.ndarray]], threshold: float, val_threshold: float | None, prefix: str = "test"
) -> dict[str, float]:
    """Test scores at the fixed threshold and at the one validation chose; a sweep on test is an oracle.

    ``<prefix>/f05``, ``/ap``, ``/f05_oracle``, ``/threshold_oracle``, ``/<fragment_id>/f05``, and with a
    `val_threshold` ``/f05_val_threshold`` and ``/val_threshold``.
    """
    maps = list(labelled.values())
    overall = overall_scores(maps, threshold)
    scores = {
        f"{prefix}/f05": overall["f05"],
        f"{prefix}/ap": overall["ap"],
        f"{prefix}/f05_oracle": overall["f05_best"],
        f"{prefix}/threshold_oracle": overall["threshold"],
    }
    if val_threshold is not None:
        scores[f"{prefix}/f05_val_threshold"] = overall_scores(maps, val_threshold)["f05"]
        scores[f"{prefix}/val_threshold"] = val_threshold
    for fid, m in labelled.items():
        scores[f"{prefix}/{fid}/f05"] = fragment_scores(m["prob"], m["label"], m["valid"], threshold)["f05"]
    return scores
