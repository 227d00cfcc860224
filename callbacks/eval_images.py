"""EvalImageLogger: the stitched validation prediction of every fragment beside its label, once per validation."""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
from PIL import Image
from pytorch_lightning.loggers import TensorBoardLogger

from utils.atomic import atomic_path
from utils.checks import check_filename_part

# Source pixels pooled per band when downsampling (bounds the float32 working copy).
_BAND_PIXELS = 1 << 22
_GAP_VALUE = 128  # mid grey between the panels, visible against black and white


def block_mean(image: np.ndarray, factor: int, band_pixels: int = _BAND_PIXELS) -> np.ndarray:
    """Mean over ``factor`` × ``factor`` blocks (partial blocks at the bottom/right edges average what they hold).

    Works in row bands, so a full-size map is never copied at once.

    Args:
        image: 2-D numeric array ``[h, w]``.
        factor: Block side (1 returns a float32 copy).
        band_pixels: Source pixels per band.

    Returns:
        float32 ``[ceil(h / factor), ceil(w / factor)]``.

    Raises:
        ValueError: A non-2-D or empty image, or ``factor < 1``.
    """
    if image.ndim != 2 or image.size == 0:
        raise ValueError(f"block_mean needs a non-empty 2-D image, got shape {image.shape}")
    if factor < 1:
        raise ValueError(f"block_mean factor must be >= 1, got {factor}")
    h, w = image.shape
    if factor == 1:
        return image.astype(np.float32)
    col_starts = np.arange(0, w, factor)
    col_counts = np.diff(np.append(col_starts, w)).astype(np.float32)
    out = np.empty((math.ceil(h / factor), col_starts.size), dtype=np.float32)
    rows = factor * max(1, band_pixels // (factor * w))
    for r0 in range(0, h, rows):
        band = image[r0 : r0 + rows].astype(np.float32)
        row_starts = np.arange(0, band.shape[0], factor)
        row_counts = np.diff(np.append(row_starts, band.shape[0])).astype(np.float32)
        sums = np.add.reduceat(np.add.reduceat(band, row_starts, axis=0), col_starts, axis=1)
        out[r0 // factor : r0 // factor + row_starts.size] = sums / (row_counts[:, None] * col_counts[None, :])
    return out


def side_by_side(prob: np.ndarray, label: np.ndarray | None, max_size: int, gap: int = 2) -> np.ndarray:
    """A grey uint8 image: probabilities (0–255) left, label (0/255) right, long side at most ``max_size``.

    Both panels are downsampled by the same integer factor with block means, so thin ink strokes show as grey
    rather than vanishing. Without a label the image is the probability panel alone.

    Args:
        prob: float ``[h, w]`` probabilities in [0, 1].
        label: ``[h, w]`` 0/1 labels, or None.
        max_size: Longest side of the result in pixels.
        gap: Width of the separating column.

    Returns:
        uint8 ``[H', W']`` with ``max(H', W') <= max_size``.

    Raises:
        ValueError: Mismatched shapes, an empty map, or a ``max_size`` too small for two panels and the gap.
    """
    if prob.ndim != 2 or prob.size == 0:
        raise ValueError(f"prob must be a non-empty 2-D map, got shape {prob.shape}")
    if label is not None and label.shape != prob.shape:
        raise ValueError(f"label shape {label.shape} differs from prob shape {prob.shape}")
    panels = 1 if label is None else 2
    extra = 0 if label is None else gap
    if max_size < panels + extra:
        raise ValueError(f"max_size {max_size} is too small for {panels} panel(s) and a {extra}-px gap")
    h, w = prob.shape
    factor = max(1, math.ceil(h / max_size), math.ceil(panels * w / (max_size - extra)))
    while max(math.ceil(h / factor), panels * math.ceil(w / factor) + extra) > max_size:
        factor += 1
    left = np.rint(np.clip(block_mean(prob, factor), 0.0, 1.0) * 255.0).astype(np.uint8)
    if label is None:
        return left
    right = np.rint(np.clip(block_mean(label, factor), 0.0, 1.0) * 255.0).astype(np.uint8)
    ph, pw = left.shape
    canvas = np.full((ph, 2 * pw + gap), _GAP_VALUE, dtype=np.uint8)
    canvas[:, :pw] = left
    canvas[:, pw + gap :] = right
    return canvas


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
        if max_size < 8:
            raise ValueError(f"EvalImageLogger max_size must be >= 8, got {max_size}")
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
                folder.mkdir(parents=True, exist_ok=True)
                path = folder / f"epoch{trainer.current_epoch:03d}_{fid}.png"
                with atomic_path(path) as tmp:
                    Image.fromarray(image).save(tmp, format="PNG")
                self.last_paths.append(path)
