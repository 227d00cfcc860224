"""InkModule: the LightningModule wiring InkNet, InkLoss, the optimizer and whole-fragment evaluation."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Timer
from pytorch_lightning.cli import LRSchedulerCallable, OptimizerCallable
from pytorch_lightning.strategies import DDPStrategy
from torch import Tensor
from torch.optim.lr_scheduler import ReduceLROnPlateau

from modules.components.ink_net import build_net
from modules.losses import InkLoss, check_finite
from modules.metrics import fragment_scores, overall_scores
from modules.param_groups import build_param_groups
from modules.schedulers import build_budget_cosine, build_warmup_cosine
from modules.stitching import FragmentStitcher, window_weights
from modules.tta import tta_predict

# Lightning's stage names, as passed to `InkDataModule.fragment_shapes`, keyed by metric prefix.
_EVAL_STAGES = {"val": "validate", "test": "test", "predict": "predict"}


class InkModule(pl.LightningModule):
    """Trains an `InkNet` on tiles and scores it on whole stitched fragments.

    Validation, test and prediction tiles are turned into probabilities (optionally averaged over the 8
    flips/rotations), blended into one map per fragment by a `FragmentStitcher`, summed across DDP ranks at
    epoch end and scored with F0.5 over each whole fragment: ``val/f05``, ``val/f05_best``, ``val/threshold``,
    ``val/ap``. Test never tunes a threshold on itself: ``test/f05`` (at `threshold`), ``test/f05_val_threshold``
    (at `val_threshold`, the best threshold of the latest validation, saved in checkpoints), ``test/ap``,
    ``test/<fragment_id>/f05``, and the labelled upper bound ``test/f05_oracle``. The maps of the last evaluation are
    kept in `last_eval_maps` (``{fragment_id: {"prob", "valid"[, "label"]}}``); they are set in the module's
    ``on_{validation,test,predict}_epoch_end``, which Lightning runs after the callbacks' hooks of the same
    name, so callbacks read them in ``on_validation_end`` / ``on_test_end`` / ``on_predict_end``.

    Args:
        num_slices: depth slices D per tile (the data module's ``num_slices``).
        encoder: timm model name (2.5-D) or ``r3d_18``, ``mc3_18``, ``r2plus1d_18``, ``tiny3d`` (3-D).
        encoder_kind: ``auto`` (from the name), ``2d`` or ``3d``.
        out_indices: encoder stages the decoder fuses; None: the encoder's default.
        depth_pool: ``mean``, ``max`` or ``attention`` pooling of 3-D stages over depth.
        decoder_channels: decoder widths, deepest level first; None derives them from the encoder.
        deep_supervision: add losses on logits of the coarser decoder levels, weighted by `aux_weight`.
        output_stride: logit map resolution relative to the tile: 1, 2 or 4.
        pretrained: download the encoder's published weights (opt-in; needs network access).
        pretrained_path: local encoder weights file.
        encoder_kwargs: extra 3-D encoder arguments (``depth_strides``, ``widths``).
        pos_weight: BCE weight of ink pixels.
        bce_weight: weight of the BCE term.
        dice_weight: weight of the Dice term.
        label_smoothing: BCE label smoothing s (targets t(1 − s) + s/2).
        edge_weight: extra BCE weight of pixels within `edge_width` px of an ink boundary.
        edge_width: boundary half-width in pixels.
        aux_weight: weight of the mean deep-supervision loss added to the main loss.
        lr: peak learning rate of head and decoder.
        layer_decay: per-stage learning-rate factor down the encoder (1: no decay).
        weight_decay: weight decay (never on biases and norm parameters).
        optimizer: callable building the optimizer from the named parameter groups (group lr/weight decay
            override its defaults).
        scheduler: callable building an LR scheduler from the optimizer; None: linear warm-up over
            `warmup_fraction` of the run, then cosine, stepped every optimizer step.
        warmup_fraction: share of the run spent warming up (default scheduler).
        freeze_encoder_epochs: train with a frozen encoder backbone (no grads, BatchNorm in eval mode) for
            this many epochs first.
        window: stitching window: ``hann``, ``gaussian`` or ``uniform``.
        tta: average probabilities over the 8 flips/rotations at validation, test and prediction.
        threshold: probability threshold of ``f05``.
        stitch_stride: stitched maps are kept at 1/stitch_stride resolution (memory of large fragments).
    """

    def __init__(
        self,
        num_slices: int = 30,
        encoder: str = "resnet10t",
        encoder_kind: str = "auto",
        out_indices: list[int] | None = None,
        depth_pool: str = "mean",
        decoder_channels: list[int] | None = None,
        deep_supervision: bool = False,
        output_stride: int = 1,
        pretrained: bool = False,
        pretrained_path: str | None = None,
        encoder_kwargs: dict[str, Any] | None = None,
        pos_weight: float = 1.0,
        bce_weight: float = 0.5,
        dice_weight: float = 0.5,
        label_smoothing: float = 0.0,
        edge_weight: float = 0.0,
        edge_width: int = 3,
        aux_weight: float = 0.4,
        lr: float = 1e-3,
        layer_decay: float = 1.0,
        weight_decay: float = 1e-2,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        scheduler: LRSchedulerCallable | None = None,
        warmup_fraction: float = 0.05,
        freeze_encoder_epochs: int = 0,
        window: str = "hann",
        tta: bool = False,
        threshold: float = 0.5,
        stitch_stride: int = 1,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["optimizer", "scheduler"])
        if not 0.0 < threshold < 1.0:
            raise ValueError(f"threshold must be in (0, 1), got {threshold}")
        if freeze_encoder_epochs < 0:
            raise ValueError(f"freeze_encoder_epochs must be >= 0, got {freeze_encoder_epochs}")
        if aux_weight < 0:
            raise ValueError(f"aux_weight must be >= 0, got {aux_weight}")
        if not 0.0 <= warmup_fraction < 1.0:
            raise ValueError(f"warmup_fraction must be in [0, 1), got {warmup_fraction}")
        if isinstance(stitch_stride, bool) or not isinstance(stitch_stride, int) or stitch_stride < 1:
            raise ValueError(f"stitch_stride must be a positive int, got {stitch_stride!r}")
        window_weights(stitch_stride, window, stitch_stride)  # rejects an unknown window now, not at validation
        # Fail at construction, not after the first epoch, on settings the optimizer would reject.
        if not lr > 0 or weight_decay < 0 or not 0 < layer_decay <= 1:
            raise ValueError(
                f"need lr > 0, weight_decay >= 0 and 0 < layer_decay <= 1; got lr={lr}, "
                f"weight_decay={weight_decay}, layer_decay={layer_decay}"
            )
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.net = build_net(
            num_slices,
            encoder=encoder,
            encoder_kind=encoder_kind,
            out_indices=out_indices,
            depth_pool=depth_pool,
            decoder_channels=decoder_channels,
            deep_supervision=deep_supervision,
            output_stride=output_stride,
            pretrained=pretrained,
            pretrained_path=pretrained_path,
            encoder_kwargs=encoder_kwargs,
        )
        self.loss = InkLoss(
            pos_weight=pos_weight,
            bce_weight=bce_weight,
            dice_weight=dice_weight,
            label_smoothing=label_smoothing,
            edge_weight=edge_weight,
            edge_width=edge_width,
        )
        self.encoder_frozen = False
        self.stitcher: FragmentStitcher | None = None
        self.last_eval_maps: dict[str, dict[str, np.ndarray]] = {}
        self.last_eval_stage: str | None = None
        self.last_eval_scores: dict[str, float] = {}
        # The best-F0.5 threshold of the latest validation; test also reports F0.5 at it (never tuned on test).
        self.val_threshold: float | None = None

    # ------------------------------------------------------------------------------------------ model

    def forward(self, image: Tensor) -> Tensor:
        """Ink logits [B, 1, T, T] of an image [B, D, T, T]."""
        return self.net(image)

    def predict_probabilities(self, image: Tensor) -> Tensor:
        """float32 probabilities [B, 1, T, T], averaged over flips/rotations when ``tta`` is on."""
        if self.hparams.tta:
            return tta_predict(self.net, image, "flips+rot90")
        return torch.sigmoid(self.net(image).float())

    # ------------------------------------------------------------------------------------------ training

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        """Loss on the valid pixels of a training batch (plus deep-supervision terms); raises on NaN/inf."""
        if "label" not in batch:
            raise ValueError("training batch has no 'label': training needs fragments with inklabels.png")
        image, label = batch["image"], batch["label"]
        valid = batch.get("valid")
        out = self.net.forward_with_aux(image)
        loss = self.loss(out["logits"], label, valid)
        if out["aux"]:
            aux = torch.stack([self.loss(a, label, valid) for a in out["aux"]]).mean()
            self.log("train/aux_loss", aux, on_step=False, on_epoch=True, batch_size=image.shape[0])
            loss = loss + self.hparams.aux_weight * aux
        check_finite(loss, "train/loss", self.global_step)
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=image.shape[0])
        return loss

    def configure_optimizers(self) -> dict[str, Any]:
        """The optimizer over named parameter groups, and a scheduler stepped every optimizer step."""
        hp = self.hparams
        groups = build_param_groups(self.net, hp.lr, hp.weight_decay, hp.layer_decay)
        optimizer = self.optimizer(groups)
        if self.scheduler is not None:
            scheduler = self.scheduler(optimizer)
            if isinstance(scheduler, ReduceLROnPlateau):
                config = {"scheduler": scheduler, "interval": "epoch", "monitor": "val/loss"}
            else:
                config = {"scheduler": scheduler, "interval": "step"}
        else:
            total = self.trainer.estimated_stepping_batches
            budget = _time_budget(self.trainer)
            if budget is not None:
                # The run ends at max_time (or max_steps, whichever comes first): the schedule follows the budget.
                steps = int(total) if math.isfinite(total) and total >= 1 else None
                scheduler = build_budget_cosine(
                    optimizer, lambda step: self._budget_progress(step, steps, budget), hp.warmup_fraction
                )
            elif math.isfinite(total) and total >= 1:
                scheduler = build_warmup_cosine(optimizer, int(total), hp.warmup_fraction)
            else:
                raise ValueError(
                    f"the warm-up + cosine schedule needs a finite run, got {total} steps: "
                    "set trainer.max_time, trainer.max_epochs or trainer.max_steps"
                )
            config = {"scheduler": scheduler, "interval": "step"}
        return {"optimizer": optimizer, "lr_scheduler": {**config, "frequency": 1, "name": "lr"}}

    def _budget_progress(self, step: int, steps: int | None, budget: Timer) -> float:
        """Share of the run done: the larger of steps taken / max_steps and time spent / max_time.

        Under DDP the ranks agree on the slowest clock, so every rank applies the same learning rate.
        """
        progress = step / steps if steps else 0.0
        elapsed = budget.time_elapsed("train") / float(budget._duration)
        trainer = self._trainer
        if trainer is not None and getattr(trainer, "world_size", 1) > 1:
            elapsed = float(trainer.strategy.reduce(torch.tensor(elapsed, device=self.device), reduce_op="max"))
        return min(1.0, max(progress, elapsed))

    # ------------------------------------------------------------------------------------------ freezing

    def set_encoder_frozen(self, frozen: bool) -> None:
        """Freezes (no grads, BatchNorm statistics fixed) or unfreezes the encoder backbone.

        New encoder layers outside the backbone stages (3-D depth-pooling attention) keep training.
        """
        for _, params in self.net.encoder.stage_parameters():
            for p in params:
                p.requires_grad_(not frozen)
        self.encoder_frozen = frozen
        self.net.encoder.train(self.training and not frozen)

    def train(self, mode: bool = True) -> InkModule:
        """Sets training mode, keeping a frozen encoder in eval mode (Lightning calls this every epoch)."""
        super().train(mode)
        if mode and self.encoder_frozen:
            self.net.encoder.eval()
        return self

    def on_fit_start(self) -> None:
        """Rejects encoder freezing under DDP without unused-parameter detection (DDP would fail mid-run)."""
        strategy = self.trainer.strategy
        if self.hparams.freeze_encoder_epochs > 0 and isinstance(strategy, DDPStrategy):
            if not getattr(strategy, "_ddp_kwargs", {}).get("find_unused_parameters", False):
                raise ValueError(
                    "freeze_encoder_epochs > 0 under DDP leaves the encoder without gradients: use "
                    "trainer.strategy=ddp_find_unused_parameters_true, or freeze_encoder_epochs=0"
                )

    def on_train_epoch_start(self) -> None:
        """Freezes the encoder for the first `freeze_encoder_epochs` epochs, then unfreezes it."""
        if self.hparams.freeze_encoder_epochs > 0:
            self.set_encoder_frozen(self.current_epoch < self.hparams.freeze_encoder_epochs)

    # ------------------------------------------------------------------------------------------ evaluation

    def _tile_size(self) -> int | None:
        datamodule = getattr(self.trainer, "datamodule", None)
        size = getattr(datamodule, "tile_size", None)
        hparams = getattr(datamodule, "hparams", None)
        if size is None and isinstance(hparams, Mapping):
            size = hparams.get("tile_size")
        return int(size) if size is not None else None

    def _new_stitcher(self, prefix: str, tile_size: int | None) -> None:
        """Allocates the stitcher from the data module's fragment shapes (lazily if the tile size is unknown)."""
        stage = _EVAL_STAGES[prefix]
        datamodule = getattr(self.trainer, "datamodule", None)
        if datamodule is None or not callable(getattr(datamodule, "fragment_shapes", None)):
            raise RuntimeError(
                f"InkModule stitches {stage} tiles into whole fragments and needs a data module with "
                f"fragment_shapes('{stage}') (e.g. InkDataModule); got {type(datamodule).__name__}. "
                "Pass datamodule=..., not bare dataloaders."
            )
        self.stitcher = None
        if tile_size is not None:
            self.stitcher = FragmentStitcher(
                datamodule.fragment_shapes(stage),
                tile_size,
                window=self.hparams.window,
                stride=self.hparams.stitch_stride,
            )

    def _eval_step(self, batch: dict[str, Any], prefix: str) -> Tensor:
        image = batch["image"]
        if self.stitcher is None:
            self._new_stitcher(prefix, int(image.shape[-1]))
        if self.hparams.tta:
            probs = tta_predict(self.net, image, "flips+rot90")
            # The loss of the averaged probabilities, so TTA costs no extra forward pass.
            logits = torch.logit(probs.clamp(1e-6, 1 - 1e-6))
        else:
            logits = self.net(image).float()
            probs = torch.sigmoid(logits)
        valid = batch.get("valid")
        if valid is None:
            valid = torch.ones_like(probs)
        label = batch.get("label")
        if label is not None and prefix != "predict":
            loss = self.loss(logits, label, valid)
            self.log(f"{prefix}/loss", loss, on_step=False, on_epoch=True, sync_dist=True, batch_size=image.shape[0])
        self.stitcher.add(list(batch["fragment"]), batch["yx"], probs, valid, label)
        return probs

    def _finish_eval(self, prefix: str) -> None:
        """Reduces the maps across ranks, keeps them in `last_eval_maps` and logs whole-fragment scores."""
        stitcher, self.stitcher = self.stitcher, None
        if stitcher is None:
            return
        stitcher.reduce()
        self.last_eval_maps = {fid: stitcher.result(fid) for fid in stitcher.fragment_ids}
        self.last_eval_stage = _EVAL_STAGES[prefix]
        self.last_eval_scores = {}
        if prefix == "predict" or self.trainer.sanity_checking:
            return
        labelled = {fid: maps for fid, maps in self.last_eval_maps.items() if "label" in maps and maps["valid"].any()}
        if not labelled:
            return
        threshold = self.hparams.threshold
        overall = overall_scores(list(labelled.values()), threshold)
        if prefix == "val":
            self.val_threshold = overall["threshold"]
            scores = {f"val/{k}": v for k, v in overall.items()}
        else:
            scores = self._test_scores(overall, labelled, prefix)
        self.last_eval_scores = scores
        # Every rank holds the same reduced maps, hence the same scores; sync_dist only averages equal values.
        for name, value in scores.items():
            self.log(name, value, sync_dist=True, prog_bar=name == f"{prefix}/f05")

    def _test_scores(
        self, overall: dict[str, float], labelled: dict[str, dict[str, np.ndarray]], prefix: str
    ) -> dict[str, float]:
        """Test scores at the fixed threshold and at the one validation chose; a sweep on test is an oracle."""
        threshold = self.hparams.threshold
        scores = {
            f"{prefix}/f05": overall["f05"],
            f"{prefix}/ap": overall["ap"],
            f"{prefix}/f05_oracle": overall["f05_best"],
            f"{prefix}/threshold_oracle": overall["threshold"],
        }
        if self.val_threshold is not None:
            maps = list(labelled.values())
            scores[f"{prefix}/f05_val_threshold"] = overall_scores(maps, self.val_threshold)["f05"]
            scores[f"{prefix}/val_threshold"] = self.val_threshold
        for fid, maps in labelled.items():
            scores[f"{prefix}/{fid}/f05"] = fragment_scores(maps["prob"], maps["label"], maps["valid"], threshold)[
                "f05"
            ]
        return scores

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Keeps the threshold chosen on validation with the weights it was chosen for."""
        if self.val_threshold is not None:
            checkpoint["val_threshold"] = float(self.val_threshold)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Restores the validation-chosen threshold (absent in checkpoints saved before any validation)."""
        value = checkpoint.get("val_threshold")
        self.val_threshold = float(value) if value is not None else None

    def on_validation_epoch_start(self) -> None:
        """Allocates the validation stitcher."""
        self._new_stitcher("val", self._tile_size())

    def validation_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> Tensor:
        """Stitches the batch's probabilities and logs ``val/loss``."""
        return self._eval_step(batch, "val")

    def on_validation_epoch_end(self) -> None:
        """Scores the stitched validation fragments (skipped during the sanity check)."""
        self._finish_eval("val")

    def on_test_epoch_start(self) -> None:
        """Allocates the test stitcher."""
        self._new_stitcher("test", self._tile_size())

    def test_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> Tensor:
        """Stitches the batch's probabilities and logs ``test/loss``."""
        return self._eval_step(batch, "test")

    def on_test_epoch_end(self) -> None:
        """Scores the stitched test fragments, overall and per fragment."""
        self._finish_eval("test")

    def on_predict_epoch_start(self) -> None:
        """Allocates the prediction stitcher."""
        self._new_stitcher("predict", self._tile_size())

    def predict_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> dict[str, Any]:
        """Stitches the batch and returns ``{"prob": [B, 1, T, T], "fragment": ids, "yx": [B, 2]}``."""
        probs = self._eval_step(batch, "predict")
        return {"prob": probs, "fragment": list(batch["fragment"]), "yx": batch["yx"]}

    def on_predict_epoch_end(self) -> None:
        """Reduces the stitched prediction maps into `last_eval_maps`."""
        self._finish_eval("predict")


def _time_budget(trainer: pl.Trainer) -> Timer | None:
    """The Trainer's ``max_time`` timer, if the run has a time budget."""
    for callback in getattr(trainer, "callbacks", None) or []:
        if isinstance(callback, Timer) and callback._duration is not None:
            return callback
    return None
