"""EvalImageLogger: the stitched validation prediction of every fragment beside its label, once per validation."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
from pytorch_lightning.loggers import TensorBoardLogger

from utils.checks import check_filename_part, check_range
from utils.figures import side_by_side
from utils.png import write_png


class EvalImageLogger(pl.Callback):
    """Logs each validation fragment's stitched prediction beside its label, every validation run.

    Reads `InkModule.last_eval_maps` in ``on_validation_end`` (the module fills them in its
    ``on_validation_epoch_end``, which Lightning runs after the callbacks' hook of that name). On rank zero,
    outside the sanity check, each fragment's image (probabilities left, label right, grey, long side at most
    `max_size`) goes to every TensorBoardLogger as ``val/<fragment_id>`` at the current global step and,
    with `save_png`, to ``<log_dir>/val_images/epoch{E:03d}_<fragment_id>.png`` (written atomically; several
    validations in one epoch overwrite the epoch's file). The paths written last are in `last_paths`.

    Args:
        max_size: Longest side of each image in pixels (at least 8).
        save_png: Also save the images as PNG files under the trainer's log folder.

    Raises:
        ValueError: ``max_size < 8``.
    """

    def __init__(self, max_size: int = 1024, save_png: bool = True) -> None:
        super().__init__()
        check_range("EvalImageLogger max_size", max_size, 8)
        self.max_size = max_size
        self.save_png = save_png
        self.last_paths: list[Path] = []

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Logs and saves the images (rank zero, not during the sanity check)."""
        if trainer.sanity_checking:
            return
        # trainer.log_dir is a collective under DDP: every rank must ask for it.
        log_dir = trainer.log_dir if self.save_png else None
        if not trainer.is_global_zero:
            return
        maps: Mapping[str, Mapping[str, np.ndarray]] | None = getattr(pl_module, "last_eval_maps", None)
        if not maps or getattr(pl_module, "last_eval_stage", "validate") != "validate":
            return
        self.last_paths = []
        tensorboards = [lg for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)]
        folder = Path(log_dir or trainer.default_root_dir) / "val_images"
        for fid, fragment in maps.items():
            check_filename_part(fid, "fragment id")
            image = side_by_side(np.asarray(fragment["prob"]), fragment.get("label"), self.max_size)
            for tb in tensorboards:
                tb.experiment.add_image(f"val/{fid}", image, global_step=trainer.global_step, dataformats="HW")
            if self.save_png:
                path = write_png(folder / f"epoch{trainer.current_epoch:03d}_{fid}.png", image, fsync=True)
                self.last_paths.append(path)
