"""InkModule: the LightningModule wiring InkNet, InkLoss, the optimizer and whole-fragment evaluation.

Its settings come in four checked groups, each described once where it is used: `NetConfig` (``--model.net.*``),
`LossConfig` (``--model.loss.*``), `EvalConfig` (``--model.eval.*``) and `OptimConfig` (``--model.optim.*``).
Checkpoints saved before the grouping (flat ``encoder``, ``lr``, ...) still load: see `group_legacy_hparams`.
"""

from __future__ import annotations

import dataclasses
import io
from collections.abc import Mapping
from typing import IO, Any

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.cli import LRSchedulerCallable, OptimizerCallable
from pytorch_lightning.strategies import DDPStrategy
from pytorch_lightning.utilities.model_helpers import _restricted_classmethod
from torch import Tensor

from modules.acceleration import NetRunner
from modules.components.ink_net import NetConfig, build_net
from modules.evaluation import (
    EVAL_STAGES,
    EvalConfig,
    callback_maps,
    datamodule_tile_size,
    eval_probabilities,
    new_stitcher,
    score_stitched,
)
from modules.evaluation.stitching import FragmentStitcher
from modules.evaluation.tta import tta_predict
from modules.losses import InkLoss, LossConfig, check_finite
from modules.optimization import OptimConfig, configure_optimization
from utils.checkpoints import load_checkpoint

# The settings groups: init argument (and hyperparameter) name → its dataclass.
SETTINGS_GROUPS: dict[str, type] = {"net": NetConfig, "loss": LossConfig, "eval": EvalConfig, "optim": OptimConfig}
# Settings that change what the network computes without changing any tensor's shape (a 3-D encoder takes any
# depth), so a checkpoint's state_dict alone cannot tell that it belongs to another model (see `shapeless_hparams`).
SHAPELESS_SETTINGS = ("num_slices", "net.depth_pool")


class InkModule(pl.LightningModule):
    """Trains an `InkNet` on tiles and scores it on whole stitched fragments.

    Validation and test tiles are turned into probabilities (optionally averaged over the 8
    flips/rotations), blended into one map per fragment by a `FragmentStitcher`, summed across DDP ranks at
    epoch end and scored with F0.5 over each whole fragment: ``val/f05``, ``val/f05_best``, ``val/threshold``,
    ``val/ap``. Test never tunes a threshold on itself: ``test/f05`` (at ``eval.threshold``),
    ``test/f05_val_threshold`` (at `val_threshold`, the best threshold of the latest validation, saved in
    checkpoints), ``test/ap``, ``test/<fragment_id>/f05``, and the labelled upper bound ``test/f05_oracle``. Scores
    count full-resolution pixels inside the mask whatever ``eval.stitch_stride`` is. The maps of the last evaluation
    are kept in `last_eval_maps` (``{fragment_id: {"prob", "valid"[, "label"], "box"}}``); they are set in
    the module's ``on_{validation,test}_epoch_end``, which Lightning runs after the callbacks' hooks of the
    same name, so callbacks read them in ``on_validation_end`` / ``on_test_end``. Prediction returns tile
    probabilities, which `InkPredictionWriter` stitches band by band in bounded memory.
    Callbacks read the settings from `net_config`, `loss_config`, `eval_config` and `optim_config` (always the
    dataclasses, whereas ``hparams`` holds what was given: dataclasses in Python, plain dicts from LightningCLI).

    Args:
        num_slices: Depth slices D per tile (the data module's ``num_slices``).
        net: The network (`NetConfig`).
        loss: The training loss (`LossConfig`).
        eval: Stitching, TTA and threshold of validation, test and prediction (`EvalConfig`).
        optim: Learning rates, weight decay, warm-up and encoder freezing (`OptimConfig`).
        compile: Run the net through ``torch.compile`` (best effort: a warning and eager mode where it cannot
            compile; `modules.acceleration`). The checkpoint's weights are the same either way.
        channels_last: Keep a 2-D encoder's weights and inputs in ``channels_last`` (faster on GPUs).
        optimizer: Callable building the optimizer from the named parameter groups (group lr/weight decay
            override its defaults).
        scheduler: Callable building an LR scheduler from the optimizer; None: linear warm-up over
            ``optim.warmup_fraction`` of the run, then cosine, stepped every optimizer step.
        init_weights: A checkpoint (or a file of the net's state dict) whose net weights a fit starts from, with a
            fresh optimizer and schedule (a label round starting from the previous round's model); a resumed fit
            (``--ckpt_path``) restores its own weights over them. The net must match the file's.
    """

    def __init__(
        self,
        num_slices: int = 30,
        net: NetConfig = NetConfig(),  # noqa: B008 - the defaults; copied below
        loss: LossConfig = LossConfig(),  # noqa: B008
        eval: EvalConfig = EvalConfig(),  # noqa: B008
        optim: OptimConfig = OptimConfig(),  # noqa: B008
        compile: bool = False,
        channels_last: bool = False,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        scheduler: LRSchedulerCallable | None = None,
        init_weights: str | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["optimizer", "scheduler"])
        self.net_config = dataclasses.replace(net)
        self.loss_config = dataclasses.replace(loss)
        self.eval_config = dataclasses.replace(eval)
        self.optim_config = dataclasses.replace(optim)
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.init_weights = init_weights
        self.net = build_net(num_slices, self.net_config)
        self.runner = NetRunner(self.net, compile=compile, channels_last=channels_last)
        self.loss = InkLoss(self.loss_config)
        self.encoder_frozen = False
        self.stitcher: FragmentStitcher | None = None
        self.last_eval_maps: dict[str, dict[str, np.ndarray]] = {}
        self.last_eval_stage: str | None = None
        self.last_eval_scores: dict[str, float] = {}
        # The best-F0.5 threshold of the latest validation; test also reports F0.5 at it (never tuned on test).
        self.val_threshold: float | None = None

    @_restricted_classmethod
    def load_from_checkpoint(
        cls,
        checkpoint_path: str | Any | IO[bytes],
        map_location: Any = None,
        hparams_file: str | Any | None = None,
        strict: bool | None = None,
        weights_only: bool | None = None,
        **kwargs: Any,
    ) -> InkModule:
        """`LightningModule.load_from_checkpoint`, also of checkpoints saved before the settings were grouped.

        Such a checkpoint's flat hyperparameters (``encoder``, ``lr``, ...) are moved into their groups first
        (`group_legacy_hparams`); other checkpoints are handed to Lightning unchanged.
        """
        checkpoint = None
        if isinstance(checkpoint_path, str | bytes) or hasattr(checkpoint_path, "__fspath__"):
            try:
                checkpoint = load_checkpoint(checkpoint_path, what="checkpoint_path")
            except (OSError, ValueError):  # missing, unreadable or unsafe: Lightning's own load says so, as before
                pass
        if checkpoint is not None:
            hparams = checkpoint.get(cls.CHECKPOINT_HYPER_PARAMS_KEY) or {}
            grouped = group_legacy_hparams(hparams)
            if grouped != hparams:
                checkpoint[cls.CHECKPOINT_HYPER_PARAMS_KEY] = grouped
                checkpoint_path = io.BytesIO()
                torch.save(checkpoint, checkpoint_path)
                checkpoint_path.seek(0)
        return super().load_from_checkpoint(  # type: ignore[misc]
            checkpoint_path, map_location, hparams_file, strict, weights_only, **kwargs
        )

    # ------------------------------------------------------------------------------------------ model

    def forward(self, image: Tensor) -> Tensor:
        """Ink logits [B, 1, T, T] of an image [B, D, T, T]."""
        return self.runner(image)

    def predict_probabilities(self, image: Tensor) -> Tensor:
        """float32 probabilities [B, 1, T, T], averaged over flips/rotations when ``eval.tta`` is on."""
        if self.eval_config.tta:
            return tta_predict(self.runner, image, "flips+rot90")
        return torch.sigmoid(self.runner(image).float())

    # ------------------------------------------------------------------------------------------ training

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        """Loss on the valid pixels of a training batch (plus deep-supervision terms); raises on NaN/inf."""
        if "label" not in batch:
            raise ValueError("training batch has no 'label': training needs fragments with inklabels.png")
        image, label = batch["image"], batch["label"]
        valid, weight = batch.get("valid"), batch.get("weight")  # weight: per tile, with pseudo-labelled segments
        out = self.runner.forward_with_aux(image)
        loss = self.loss(out["logits"], label, valid, weight)
        if out["aux"]:
            aux = torch.stack([self.loss(a, label, valid, weight) for a in out["aux"]]).mean()
            self.log("train/aux_loss", aux, on_step=False, on_epoch=True, batch_size=image.shape[0])
            loss = loss + self.loss_config.aux_weight * aux
        check_finite(loss, "train/loss", self.global_step)
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=image.shape[0])
        return loss

    def configure_optimizers(self) -> dict[str, Any]:
        """The optimizer over named parameter groups, and a scheduler stepped every optimizer step."""
        return configure_optimization(self, self.optim_config, self.optimizer, self.scheduler)

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

    def setup(self, stage: str) -> None:
        """Before fitting, loads ``init_weights`` (a resumed fit's checkpoint is restored after this, over them)."""
        if stage == "fit" and self.init_weights:
            load_net_weights(self.net, self.init_weights)

    def on_fit_start(self) -> None:
        """Rejects encoder freezing under DDP without unused-parameter detection (DDP would fail mid-run)."""
        strategy = self.trainer.strategy
        if self.optim_config.freeze_encoder_epochs > 0 and isinstance(strategy, DDPStrategy):
            if not getattr(strategy, "_ddp_kwargs", {}).get("find_unused_parameters", False):
                raise ValueError(
                    "optim.freeze_encoder_epochs > 0 under DDP leaves the encoder without gradients: use "
                    "trainer.strategy=ddp_find_unused_parameters_true, or freeze_encoder_epochs=0"
                )

    def on_train_epoch_start(self) -> None:
        """Freezes the encoder for the first `freeze_encoder_epochs` epochs, then unfreezes it."""
        epochs = self.optim_config.freeze_encoder_epochs
        if epochs > 0:
            self.set_encoder_frozen(self.current_epoch < epochs)

    # ------------------------------------------------------------------------------------------ evaluation

    def _start_eval(self, prefix: str) -> None:
        """Allocates the stitcher of an evaluation stage (lazily, at the first batch, if the tile size is unknown)."""
        self.stitcher = new_stitcher(self.trainer, prefix, datamodule_tile_size(self.trainer), self.eval_config)

    def _eval_step(self, batch: dict[str, Any], prefix: str) -> Tensor:
        image = batch["image"]
        if self.stitcher is None:
            self.stitcher = new_stitcher(self.trainer, prefix, int(image.shape[-1]), self.eval_config)
        probs, logits = eval_probabilities(self.runner, image, self.eval_config.tta)
        valid = batch.get("valid")
        if valid is None:
            valid = torch.ones_like(probs)
        label = batch.get("label")
        if label is not None:
            loss = self.loss(logits, label, valid)
            self.log(f"{prefix}/loss", loss, on_step=False, on_epoch=True, sync_dist=True, batch_size=image.shape[0])
        self.stitcher.add(list(batch["fragment"]), batch["yx"], probs, valid, label)
        return probs

    def _finish_eval(self, prefix: str) -> None:
        """Reduces the maps across ranks, logs whole-fragment scores and keeps the maps in `last_eval_maps`."""
        stitcher, self.stitcher = self.stitcher, None
        if stitcher is None:
            return
        self.last_eval_maps = {}  # the previous evaluation's maps go before this one's are built
        stitcher.reduce()
        stitcher.finish()  # the weight sums are freed before anything else is built
        self.last_eval_stage = EVAL_STAGES[prefix]
        self.last_eval_scores = {}
        if not self.trainer.sanity_checking:
            # Full-resolution counts, each rank counting its share of the rows: every rank gets the same scores.
            scores = score_stitched(stitcher, prefix, self.eval_config.threshold, self.val_threshold)
            if scores and prefix == "val":
                self.val_threshold = scores["val/threshold"]
            self.last_eval_scores = scores
            for name, value in scores.items():
                # Equal on every rank already; sync_dist only averages equal values (and keeps Lightning quiet).
                self.log(name, value, sync_dist=True, prog_bar=name == f"{prefix}/f05")
        self.last_eval_maps = callback_maps(stitcher, prefix)

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
        self._start_eval("val")

    def validation_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> Tensor:
        """Stitches the batch's probabilities and logs ``val/loss``."""
        return self._eval_step(batch, "val")

    def on_validation_epoch_end(self) -> None:
        """Scores the stitched validation fragments (skipped during the sanity check)."""
        self._finish_eval("val")

    def on_test_epoch_start(self) -> None:
        """Allocates the test stitcher."""
        self._start_eval("test")

    def test_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> Tensor:
        """Stitches the batch's probabilities and logs ``test/loss``."""
        return self._eval_step(batch, "test")

    def on_test_epoch_end(self) -> None:
        """Scores the stitched test fragments, overall and per fragment."""
        self._finish_eval("test")

    def predict_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> dict[str, Any]:
        """Tile probabilities: ``{"prob": [B, 1, T, T], "valid": [B, 1, T, T], "fragment": ids, "yx": [B, 2]}``.

        Prediction is not stitched here: `callbacks.prediction_writer.InkPredictionWriter` blends the tiles into row
        bands and writes them as they complete, so memory does not grow with the segment.
        """
        probs = self.predict_probabilities(batch["image"])
        valid = batch.get("valid")
        return {
            "prob": probs,
            "valid": torch.ones_like(probs) if valid is None else valid,
            "fragment": list(batch["fragment"]),
            "yx": batch["yx"],
        }


def group_legacy_hparams(hparams: Mapping[str, Any]) -> dict[str, Any]:
    """Hyperparameters of a checkpoint saved before the settings were grouped, in today's layout.

    Flat settings (``encoder``, ``lr``, ``threshold``, ...) move into their group (``net``, ``optim``, ``eval``,
    ...), as their saver would have stored them: plain dicts for LightningCLI (``_instantiator`` present),
    dataclasses otherwise. Grouped hyperparameters come back unchanged (as a new dict).
    """
    grouped = dict(hparams)
    for group, config_type in SETTINGS_GROUPS.items():
        flat = {f.name: grouped.pop(f.name) for f in dataclasses.fields(config_type) if f.name in grouped}
        if flat:
            grouped[group] = flat if "_instantiator" in grouped else config_type(**flat)
    return grouped


def shapeless_hparams(hparams: Mapping[str, Any]) -> dict[str, Any]:
    """The `SHAPELESS_SETTINGS` found in hyperparameters of any layout (flat, grouped dicts or dataclasses).

    Keyed by dotted name (``net.depth_pool``); a setting that is absent is left out. Nothing is built or checked, so
    another model's checkpoint can be compared.
    """
    found = {}
    for name in SHAPELESS_SETTINGS:
        group, _, key = name.rpartition(".")
        value = hparams.get(key)  # flat: saved before the settings were grouped
        if group and group in hparams:
            container = hparams[group]
            value = container.get(key) if isinstance(container, Mapping) else getattr(container, key, None)
        if value is not None:
            found[name] = value
    return found


def load_net_weights(net: torch.nn.Module, path: str) -> None:
    """Loads a checkpoint's (``state_dict`` with ``net.`` keys) or a bare state dict's weights into ``net``, strictly.

    Raises:
        ValueError: the file holds no weights of this net, or weights of another shape, naming the file.
    """
    checkpoint = load_checkpoint(path, what="model.init_weights")
    state = checkpoint.get("state_dict", checkpoint) if isinstance(checkpoint, Mapping) else None
    if not isinstance(state, Mapping):
        raise ValueError(f"model.init_weights '{path}': holds no state dict")
    weights = {k[len("net.") :]: v for k, v in state.items() if k.startswith("net.")} or dict(state)
    try:
        net.load_state_dict(weights, strict=True)
    except RuntimeError as err:
        first = str(err).strip().splitlines()
        raise ValueError(
            f"model.init_weights '{path}': its weights do not fit this net (the same --model.net.* settings and "
            f"depth are needed): {' '.join(line.strip() for line in first[:3])}"
        ) from err
