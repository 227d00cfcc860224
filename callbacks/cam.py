"""Grad-CAM of the ink logit on a fixed set of validation tiles, saved as PNG overlays and logged to TensorBoard.

What the pictures mean:

* ``epoch{E:03d}_tile{i}.png`` — the tile's middle input slice in grey, the Grad-CAM heat map blended over it
  (jet palette, opacity growing with the CAM value) and the ink label's outline in green. Hot regions are the
  places whose features at the target layer raise the summed ink logit; the outline shows where ink really is.
* ``epoch{E:03d}_tile{i}_depth.png`` — which input depth slices the model relies on. Bars (any model): the
  share of input-gradient × input, ``sum_{y,x} |d target / d x[d, y, x] * x[d, y, x]|`` per slice ``d``.
  Line (3-D target layers only): the share of Grad-CAM mass at each depth index of the 5-D activation,
  interpolated back to the input's ``D`` slices. Both sum to 1 over the slices; the x axis gives absolute
  slice numbers (``z_start + d``, the tile's fragment's own window) when the data module tells them.

The maths (target, weights, default layer) are in `modules.gradcam`, the tile choice in `datamodules.cam_tiles`
and the drawing in `utils.figures`; this file decides when to run, where the files go and what is logged.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import TensorBoardLogger
from pytorch_lightning.utilities import rank_zero_warn
from torch.utils.data import DataLoader

from datamodules.cam_tiles import check_tiles, choose_inky, read_items, stack_items
from modules.gradcam import TARGETS, compute_grad_cam, default_target_layer, find_module, get_net
from utils.checks import check_int, check_range
from utils.figures import cam_overlay, depth_profile_chart
from utils.hparams import grouped_setting
from utils.png import write_png


class GradCAMCallback(pl.Callback):
    """Saves and logs Grad-CAM overlays and depth profiles of a fixed set of validation tiles.

    Every `every_n_epochs` epochs (at the end of validation; never in the sanity check; once per epoch even when
    validation runs several times in it; rank zero only), the callback runs `compute_grad_cam` on its tiles and
    writes ``<output_dir>/epoch{E:03d}_tile{i}.png`` and ``..._tile{i}_depth.png`` (meaning: module docstring),
    and logs them as images ``cam/tile{i}`` and ``cam/depth{i}`` to every TensorBoard logger.

    The tiles are chosen once, the first time: `candidate_tiles` items evenly spread over the validation
    dataset are read (the first batches of the loader if it is not indexable), and `num_tiles` are taken,
    evenly spread, from those whose labelled ink covers at least `min_ink_fraction` of the tile (topped up
    with the inkiest others). They are kept in `state_dict` (about ``num_tiles·D·T²·4`` bytes for the
    images), so a resumed run shows the same tiles. Two instances need distinct `output_dir` and
    `target_layer` (the latter keys the checkpoint state).

    Args:
        every_n_epochs: run at epochs E with ``(E + 1) % every_n_epochs == 0``.
        num_tiles: tiles to show.
        target_layer: dotted module name under the LightningModule, e.g. ``net.encoder.model.layer3`` or
            ``net.decoder.blocks.0``; None: the deepest spatial encoder activation (`modules.gradcam`).
        output_dir: where the PNGs go; default ``<trainer.log_dir>/cam``.
        log_to_tensorboard: also log the images to TensorBoard loggers.
        min_ink_fraction: share of a tile's pixels labelled ink (inside the mask) that makes it informative.
        candidate_tiles: validation tiles examined when choosing.
        target: which pixels' logits are summed into the target: ``predicted`` (standard), ``label``, ``valid``.
    """

    def __init__(
        self,
        every_n_epochs: int = 1,
        num_tiles: int = 4,
        target_layer: str | None = None,
        output_dir: str | None = None,
        log_to_tensorboard: bool = True,
        min_ink_fraction: float = 0.05,
        candidate_tiles: int = 64,
        target: str = "predicted",
    ) -> None:
        super().__init__()
        check_int("GradCAMCallback every_n_epochs", every_n_epochs, minimum=1)
        check_int("GradCAMCallback num_tiles", num_tiles, minimum=1)
        check_int("GradCAMCallback candidate_tiles", candidate_tiles, minimum=num_tiles)
        check_range("GradCAMCallback min_ink_fraction", min_ink_fraction, 0.0, 1.0)
        if target not in TARGETS:
            raise ValueError(f"GradCAMCallback target={target!r}: choose one of {list(TARGETS)}")
        if target_layer is not None and (not isinstance(target_layer, str) or not target_layer):
            raise ValueError(f"GradCAMCallback target_layer={target_layer!r}: must be a dotted module name or None")
        self.every_n_epochs = every_n_epochs
        self.num_tiles = num_tiles
        self.target_layer = target_layer
        self.output_dir = output_dir
        self.log_to_tensorboard = log_to_tensorboard
        self.min_ink_fraction = min_ink_fraction
        self.candidate_tiles = candidate_tiles
        self.target = target
        self.tiles: dict[str, Any] | None = None
        self.resolved_layer: str | None = None
        self._last_epoch: int | None = None
        self._log_dir: str | None = None

    @property
    def state_key(self) -> str:
        """Checkpoint key; includes the target layer so instances on different layers keep their own tiles."""
        return self._generate_state_key(target_layer=self.target_layer)

    # ---------------------------------------------------------------------------------------- Lightning hooks

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Checks `net` and an explicit `target_layer` before any training, so a typo fails at once."""
        get_net(pl_module)
        if self.target_layer is not None:
            find_module(pl_module, self.target_layer)

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Runs the CAM when the epoch is due (not in the sanity check; rank zero only)."""
        if trainer.sanity_checking:
            return
        epoch = trainer.current_epoch
        if (epoch + 1) % self.every_n_epochs != 0 or epoch == self._last_epoch:
            return
        self._last_epoch = epoch
        # trainer.log_dir is a collective under DDP: every rank asks for it before rank zero works alone.
        self._log_dir = None if self.output_dir else trainer.log_dir
        if trainer.is_global_zero:
            self.run(trainer, pl_module)

    def state_dict(self) -> dict[str, Any]:
        """The chosen tiles (CPU tensors and fragment ids), or nothing before they are chosen."""
        if self.tiles is None:
            return {}
        return {"tiles": {k: (list(v) if k == "fragment" else v) for k, v in self.tiles.items()}}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restores the tiles of `state_dict` (an empty dict leaves them to be chosen)."""
        tiles = state_dict.get("tiles")
        self.tiles = None if tiles is None else check_tiles(tiles, "GradCAMCallback checkpoint state")

    # ---------------------------------------------------------------------------------------- work

    def run(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> list[Path]:
        """Computes, saves and logs the CAMs of the tiles for the current epoch; returns the PNG paths."""
        # Validation hooks run under inference_mode; tiles made there could never take part in autograd.
        if self._log_dir is None and not self.output_dir and trainer.world_size == 1:
            self._log_dir = trainer.log_dir  # a direct call outside the hook, single process
        with torch.inference_mode(False):
            return self._run(trainer, pl_module)

    def _run(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> list[Path]:
        if self.tiles is None:
            self.tiles = self.select_tiles(trainer)
            if self.tiles is None:
                return []
        tiles = self.tiles
        if self.resolved_layer is None:
            self.resolved_layer = self.target_layer or default_target_layer(pl_module, tiles["image"][:1])
        result = compute_grad_cam(
            pl_module, tiles["image"], tiles["label"], tiles["valid"], self.resolved_layer, self.target
        )
        out_dir = Path(self.output_dir) if self.output_dir else Path(self._log_dir or trainer.default_root_dir) / "cam"
        loggers = [lg for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)] if self.log_to_tensorboard else []
        epoch, step = trainer.current_epoch, trainer.global_step
        image = tiles["image"]
        paths: list[Path] = []
        for i in range(image.shape[0]):
            overlay = cam_overlay(
                image[i, image.shape[1] // 2].numpy(), result.cam[i].numpy(), tiles["label"][i, 0].numpy()
            )
            y, x = (int(v) for v in tiles["yx"][i])
            chart = depth_profile_chart(
                result.input_depth[i].numpy(),
                None if result.cam_depth is None else result.cam_depth[i].numpy(),
                first_slice=_z_start(trainer, tiles["fragment"][i]),
                title=f"tile {i}: {tiles['fragment'][i]} y={y} x={x}, epoch {epoch}, target {result.target_source[i]}",
            )
            paths.append(write_png(out_dir / f"epoch{epoch:03d}_tile{i}.png", overlay))
            paths.append(write_png(out_dir / f"epoch{epoch:03d}_tile{i}_depth.png", chart))
            for logger in loggers:
                logger.experiment.add_image(f"cam/tile{i}", overlay, global_step=step, dataformats="HWC")
                logger.experiment.add_image(f"cam/depth{i}", chart, global_step=step, dataformats="HWC")
        return paths

    def select_tiles(self, trainer: pl.Trainer) -> dict[str, Any] | None:
        """Chooses `num_tiles` validation tiles, preferring ones with ink (rule in the class docstring)."""
        items = self._candidates(trainer)
        if not items:
            rank_zero_warn("GradCAMCallback: the validation data yielded no tile; no Grad-CAM images are made")
            return None
        tiles = check_tiles(stack_items(items), "GradCAMCallback validation tiles")
        count = min(self.num_tiles, len(items))
        if count < self.num_tiles:
            rank_zero_warn(f"GradCAMCallback: only {count} validation tiles available (num_tiles={self.num_tiles})")
        return choose_inky(tiles, count, self.min_ink_fraction)

    def _candidates(self, trainer: pl.Trainer) -> list[dict[str, Any]]:
        return read_items(_val_loader(trainer), self.candidate_tiles)


def _val_loader(trainer: pl.Trainer) -> DataLoader:
    """The (first) validation loader of the trainer, else of its data module."""
    loaders = trainer.val_dataloaders
    if loaders is None and trainer.datamodule is not None:
        loaders = trainer.datamodule.val_dataloader()
    if isinstance(loaders, Mapping):
        loaders = next(iter(loaders.values()), None)
    if isinstance(loaders, list | tuple):
        loaders = loaders[0] if loaders else None
    if loaders is None:
        raise ValueError("GradCAMCallback needs a validation dataloader (trainer.val_dataloaders / the datamodule)")
    return loaders


def _z_start(trainer: pl.Trainer, fragment_id: str) -> int:
    """The index of the tile's first slice, for the charts' x axis: its fragment's own window start (with
    ``z_window: auto`` each fragment has its own), else the data module's ``window.z_start``, else 0."""
    datamodule = getattr(trainer, "datamodule", None)
    fragments = getattr(datamodule, "fragments", None)
    if callable(fragments):
        try:
            for fragment in fragments("val"):
                if getattr(fragment, "id", None) == fragment_id:
                    return int(fragment.z_start)
        except (RuntimeError, ValueError, TypeError):  # not set up, or a data module of another shape
            pass
    z_start = grouped_setting(getattr(datamodule, "hparams", None), "window", "z_start")
    return int(z_start) if isinstance(z_start, int) else 0
