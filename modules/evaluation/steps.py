"""Whole-fragment evaluation: `EvalConfig` (``--model.eval.*``), and the stitching and scoring InkModule runs.

The task's metric is F0.5 over whole fragments, so validation and test tiles are first turned into
probabilities (`modules.evaluation.tta` when ``tta`` is on), blended into one map per fragment
(`modules.evaluation.stitching`), and only then scored (`modules.evaluation.metrics`). This file holds the settings
of that path and the steps the LightningModule calls; the module keeps the state callbacks read
(``last_eval_maps``, ``val_threshold``). Prediction tiles are stitched band by band by
`callbacks.prediction_writer.InkPredictionWriter` instead.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pytorch_lightning as pl
import torch
from torch import Tensor

from modules.evaluation.distributed import distributed_world
from modules.evaluation.metrics import InkScoreAccumulator
from modules.evaluation.stitching import FragmentStitcher
from modules.evaluation.tta import tta_predict
from modules.evaluation.windows import window_weights
from utils.checks import check_int, check_threshold
from utils.hparams import grouped_setting

# Full-resolution pixels per scored band: bounds the upsampling and counting temporaries to a few tens of MB.
SCORE_BAND_PIXELS = 1 << 20
# Lightning's stage names, as passed to `InkDataModule.fragment_shapes`, keyed by metric prefix.
EVAL_STAGES = {"val": "validate", "test": "test"}


@dataclass
class EvalConfig:
    """How validation, test and prediction tiles become scored fragment maps (``--model.eval.*``).

    Attributes:
        window: Stitching window: ``hann``, ``gaussian`` or ``uniform`` (see `window_weights`).
        stitch_stride: Validation and test probabilities are kept at 1/stitch_stride resolution (memory of large
            fragments; prediction is stitched at full resolution, band by band, by the prediction writer);
            scores still count full-resolution pixels (the map is upsampled band by band when counting).
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


def eval_probabilities(net: Callable[[Tensor], Tensor], image: Tensor, tta: bool) -> tuple[Tensor, Tensor]:
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
    if size is None:
        size = grouped_setting(getattr(datamodule, "hparams", None), "tiles", "tile_size")
    return int(size) if size is not None else None


def new_stitcher(
    trainer: pl.Trainer, prefix: str, tile_size: int | None, config: EvalConfig
) -> FragmentStitcher | None:
    """A stitcher over the data module's fragment shapes of the stage; None while the tile size is unknown.

    A data module with ``fragment_boxes(stage)`` (``{fragment_id: (y0, x0, y1, x1)}``, identical on every rank)
    limits validation and test buffers to those boxes.

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
    # Only the box a stage scores is allocated (a region split's band).
    boxes_of = getattr(datamodule, "fragment_boxes", None)
    boxes = boxes_of(stage) if callable(boxes_of) else None
    return FragmentStitcher(
        datamodule.fragment_shapes(stage), tile_size, window=config.window, stride=config.stitch_stride, boxes=boxes
    )


def score_stitched(
    stitcher: FragmentStitcher, prefix: str, threshold: float, val_threshold: float | None = None
) -> dict[str, float]:
    """Whole-fragment scores of a reduced stitcher, over full-resolution pixels inside valid; {} with none.

    Every rank counts its share of the row bands (`FragmentStitcher.bands`) and the counts are summed across ranks,
    so each pixel is counted once and every rank returns the same scores (all ranks must call it). Fragments
    without labels are not scored.

    Returns:
        Validation (``prefix="val"``): ``val/f05`` (at `threshold`), ``val/f05_best`` and ``val/threshold`` (a
        sweep), ``val/ap``. Test: ``<prefix>/f05``, ``/ap``, the oracle ``/f05_oracle`` and ``/threshold_oracle``
        (a sweep on test itself), ``/<fragment_id>/f05``, and with a `val_threshold` ``/f05_val_threshold`` and
        ``/val_threshold``.
    """
    rank, world = distributed_world()
    labelled = [fid for fid in stitcher.fragment_ids if stitcher.labelled(fid)]
    overall = InkScoreAccumulator(threshold)
    test = prefix != "val"
    at_val = InkScoreAccumulator(val_threshold, with_curve=False) if test and val_threshold is not None else None
    per_fragment = {fid: InkScoreAccumulator(threshold, with_curve=False) for fid in labelled} if test else {}
    for fid in labelled:
        fed = [overall, *([at_val] if at_val else []), *([per_fragment[fid]] if test else [])]
        for prob, label, valid in stitcher.bands(fid, SCORE_BAND_PIXELS, rank, world):
            for acc in fed:
                acc.update(prob, label, valid)
    for acc in (overall, at_val, *per_fragment.values()):
        if acc is not None:
            acc.all_reduce()
    if overall.count == 0:
        return {}
    scores = overall.compute()
    if not test:
        return {f"val/{k}": v for k, v in scores.items()}
    out = {
        f"{prefix}/f05": scores["f05"],
        f"{prefix}/ap": scores["ap"],
        f"{prefix}/f05_oracle": scores["f05_best"],
        f"{prefix}/threshold_oracle": scores["threshold"],
    }
    if at_val is not None:
        out[f"{prefix}/f05_val_threshold"] = at_val.compute()["f05"]
        out[f"{prefix}/val_threshold"] = float(val_threshold)  # type: ignore[arg-type]
    for fid, acc in per_fragment.items():
        if acc.count > 0:
            out[f"{prefix}/{fid}/f05"] = acc.compute()["f05"]
    return out


def callback_maps(stitcher: FragmentStitcher, prefix: str) -> dict[str, dict[str, object]]:
    """The maps `InkModule.last_eval_maps` keeps, freeing the stitcher's buffers fragment by fragment.

    Validation maps stay in memory through training for the callbacks (images), so their probabilities are kept as
    float16 (scores are counted before, from the float32 map); test maps keep float32.
    """
    dtype = np.float16 if prefix == "val" else np.float32
    return {fid: stitcher.result(fid, prob_dtype=dtype, release=True) for fid in stitcher.fragment_ids}
