"""InkPredictionWriter: writes the stitched prediction of every fragment as PNGs and a Kaggle submission."""

from __future__ import annotations

import csv
import math
from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
from pytorch_lightning.utilities import rank_zero_warn

from utils.atomic import atomic_open, ensure_writable_dir
from utils.checks import check_filename_part
from utils.png import StreamingPngWriter
from utils.rle import RleEncoder

# Full-resolution pixels produced per band; bounds the writer's working memory (a few float32 bands).
BAND_PIXELS = 1 << 22


def _axis_scale(full: int, stored: int) -> float:
    """Full-resolution pixels per stored pixel: the integer stitch stride when it explains the sizes."""
    guess = math.ceil(full / stored)
    for s in (guess, guess - 1, guess + 1):
        if s >= 1 and math.ceil(full / s) == stored:
            return float(s)
    return full / stored


def _nearest_index(stored: int, scale: float, start: int, stop: int) -> np.ndarray:
    """Stored index of full-resolution pixels ``start..stop-1`` (the stored pixel whose block holds them)."""
    pos = (np.arange(start, stop, dtype=np.float64) + 0.5) / scale
    return np.minimum(pos.astype(np.int64), stored - 1)


def _linear_weights(stored: int, scale: float, start: int, stop: int) -> tuple[np.ndarray, ...]:
    """Bilinear taps (i0, i1, w1) along one axis; stored pixel i is centred on full coordinate (i + 0.5) * scale."""
    pos = (np.arange(start, stop, dtype=np.float64) + 0.5) / scale - 0.5
    pos = np.clip(pos, 0.0, stored - 1)
    i0 = np.floor(pos).astype(np.int64)
    i1 = np.minimum(i0 + 1, stored - 1)
    return i0, i1, (pos - i0).astype(np.float32)


def full_resolution_bands(
    prob: np.ndarray, valid: np.ndarray, full_shape: tuple[int, int], band_pixels: int = BAND_PIXELS
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yields ``(prob, valid)`` row bands of the maps upsampled to ``full_shape``, top to bottom.

    Probabilities are interpolated bilinearly, ``valid`` by nearest neighbour. A stored pixel ``(i, j)`` of a
    map kept at ``1/s`` resolution covers the full-resolution block starting at ``(i * s, j * s)`` (as
    `modules.stitching.FragmentStitcher` stores them). Maps already at full resolution are sliced, not copied.

    Args:
        prob: float ``[h, w]`` probabilities.
        valid: bool ``[h, w]``.
        full_shape: ``(H, W)`` with ``H >= h`` and ``W >= w``.
        band_pixels: Full-resolution pixels per band (bounds memory).

    Yields:
        float32 ``[n, W]`` probabilities and bool ``[n, W]`` valid flags.
    """
    h, w = prob.shape
    height, width = full_shape
    rows = max(1, band_pixels // width)
    if (h, w) == (height, width):
        for r0 in range(0, height, rows):
            yield prob[r0 : r0 + rows].astype(np.float32, copy=False), valid[r0 : r0 + rows]
        return
    sy, sx = _axis_scale(height, h), _axis_scale(width, w)
    cols_nearest = _nearest_index(w, sx, 0, width)
    j0, j1, wx = _linear_weights(w, sx, 0, width)
    for r0 in range(0, height, rows):
        r1 = min(height, r0 + rows)
        i0, i1, wy = _linear_weights(h, sy, r0, r1)
        top = prob[i0].astype(np.float32, copy=False)
        mixed = top + (prob[i1] - top) * wy[:, None]
        # In place, so a band costs two full-width float32 arrays.
        band = mixed[:, j1]
        left = mixed[:, j0]
        band -= left
        band *= wx[None, :]
        band += left
        del left
        valid_band = valid[np.ix_(_nearest_index(h, sy, r0, r1), cols_nearest)]
        yield band, valid_band


class InkPredictionWriter(pl.Callback):
    """Writes each predicted fragment as ``<id>_prediction.png`` and ``<id>_mask.png``, plus ``submission.csv``.

    After ``trainer.predict`` the module's stitched maps (`InkModule.last_eval_maps`) are upsampled to each
    fragment's full resolution (``datamodule.fragment_shapes("predict")``) in row bands and written on rank
    zero:

    - ``<output_dir>/<id>_prediction.png``: probabilities as 8-bit grey, ``round(255 * p)``;
    - ``<output_dir>/<id>_mask.png``: 255 where ``p > threshold`` inside the valid (papyrus, covered) map, else 0;
    - ``<output_dir>/submission.csv``: ``Id,Predicted`` with one row per fragment, the run-length encoding
      (`utils.rle`) of that mask, written after all fragments.

    Every file is written under a temporary name and renamed when complete, so a failure leaves no partial
    file. The output folder is created and checked for writability when prediction starts, before any
    compute. The paths written are kept in `written_paths` (rank zero; empty elsewhere).

    Args:
        output_dir: Folder for the outputs (created with parents).
        threshold: Ink probability threshold of the masks; None: the module's ``hparams.threshold``, else 0.5.
        write_submission: Also write ``submission.csv``.

    Raises:
        ValueError: A threshold outside (0, 1).
    """

    def __init__(self, output_dir: str = "predictions", threshold: float | None = None, write_submission: bool = True):
        super().__init__()
        if threshold is not None and not 0.0 < threshold < 1.0:
            raise ValueError(f"InkPredictionWriter threshold must be in (0, 1) or None, got {threshold}")
        self.output_dir = Path(output_dir)
        self.threshold = threshold
        self.write_submission = write_submission
        self.written_paths: list[Path] = []

    def on_predict_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Checks the module and creates/checks the output folder on rank zero; every rank fails together."""
        self.written_paths = []
        if not hasattr(pl_module, "last_eval_maps"):
            raise TypeError(
                f"InkPredictionWriter needs a module that stitches whole-fragment maps into `last_eval_maps` "
                f"(such as InkModule); {type(pl_module).__name__} has none"
            )
        failure: OSError | None = None
        if trainer.is_global_zero:
            try:
                ensure_writable_dir(self.output_dir, "InkPredictionWriter output_dir")
            except OSError as e:
                failure = e
        # Agree on the outcome so that no rank starts a prediction that rank zero cannot write.
        message = trainer.strategy.broadcast(None if failure is None else str(failure), src=0)
        if failure is not None:
            raise failure
        if message is not None:
            raise OSError(f"on rank zero: {message}")

    def on_predict_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Writes the outputs (rank zero). Runs after the module's ``on_predict_epoch_end`` reduced the maps."""
        if not trainer.is_global_zero:
            return
        maps = self._prediction_maps(pl_module)
        threshold = self._resolve_threshold(pl_module)
        shapes = self._full_shapes(trainer, pl_module, maps)
        rows: list[tuple[str, str]] = []
        for fid, fragment in maps.items():
            rows.append((fid, self._write_fragment(fid, fragment, shapes[fid], threshold)))
        if self.write_submission:
            path = self.output_dir / "submission.csv"
            with atomic_open(path, "w", newline="") as f:
                writer = csv.writer(f, lineterminator="\n")
                writer.writerow(["Id", "Predicted"])
                writer.writerows(rows)
            self.written_paths.append(path)

    # ------------------------------------------------------------------------------------------ helpers

    @staticmethod
    def _prediction_maps(pl_module: pl.LightningModule) -> Mapping[str, Mapping[str, np.ndarray]]:
        stage = getattr(pl_module, "last_eval_stage", "predict")
        maps = getattr(pl_module, "last_eval_maps", None)
        if stage != "predict" or not maps:
            raise RuntimeError(
                f"InkPredictionWriter: {type(pl_module).__name__} holds no stitched prediction maps after predict "
                f"(last_eval_stage={stage!r}, {len(maps or {})} fragments); did the predict data yield any tiles?"
            )
        for fid, fragment in maps.items():
            check_filename_part(fid, "fragment id")
            prob, valid = fragment.get("prob"), fragment.get("valid")
            if not isinstance(prob, np.ndarray) or prob.ndim != 2 or not np.issubdtype(prob.dtype, np.floating):
                raise ValueError(f"last_eval_maps[{fid!r}]['prob'] must be a 2-D float array, got {prob!r:.80}")
            if not isinstance(valid, np.ndarray) or valid.shape != prob.shape or valid.dtype != np.bool_:
                raise ValueError(
                    f"last_eval_maps[{fid!r}]['valid'] must be a bool array of the prob shape {prob.shape}, "
                    f"got {getattr(valid, 'dtype', type(valid).__name__)} {getattr(valid, 'shape', '')}"
                )
        return maps

    def _resolve_threshold(self, pl_module: pl.LightningModule) -> float:
        if self.threshold is not None:
            return self.threshold
        hparams = getattr(pl_module, "hparams", None)
        threshold = float(hparams.get("threshold", 0.5)) if isinstance(hparams, Mapping) else 0.5
        if not 0.0 < threshold < 1.0:
            raise ValueError(f"InkPredictionWriter: the module's threshold hparam must be in (0, 1), got {threshold}")
        return threshold

    @staticmethod
    def _full_shapes(
        trainer: pl.Trainer, pl_module: pl.LightningModule, maps: Mapping[str, Mapping[str, np.ndarray]]
    ) -> dict[str, tuple[int, int]]:
        datamodule = getattr(trainer, "datamodule", None)
        fragment_shapes = getattr(datamodule, "fragment_shapes", None)
        if not callable(fragment_shapes):
            hparams = getattr(pl_module, "hparams", None)
            stride = hparams.get("stitch_stride", 1) if isinstance(hparams, Mapping) else 1
            if stride != 1:
                rank_zero_warn(
                    f"InkPredictionWriter: no datamodule.fragment_shapes to upsample to, so the predictions are "
                    f"written at the stitched 1/{stride} resolution"
                )
            return {fid: tuple(m["prob"].shape) for fid, m in maps.items()}
        known = fragment_shapes("predict")
        shapes: dict[str, tuple[int, int]] = {}
        for fid, fragment in maps.items():
            if fid not in known:
                raise ValueError(
                    f"InkPredictionWriter: fragment {fid!r} has a stitched map but is not among "
                    f"datamodule.fragment_shapes('predict') ({sorted(known)})"
                )
            full = (int(known[fid][0]), int(known[fid][1]))
            h, w = fragment["prob"].shape
            if h > full[0] or w > full[1] or h == 0 or w == 0:
                raise ValueError(
                    f"InkPredictionWriter: stitched map of fragment {fid!r} is {h} x {w}, which cannot be upsampled "
                    f"to its full size {full[0]} x {full[1]}"
                )
            shapes[fid] = full
        return shapes

    def _write_fragment(
        self, fid: str, fragment: Mapping[str, np.ndarray], full_shape: tuple[int, int], threshold: float
    ) -> str:
        """Writes both PNGs of one fragment and returns the RLE of its mask."""
        prob_path = self.output_dir / f"{fid}_prediction.png"
        mask_path = self.output_dir / f"{fid}_mask.png"
        height, width = full_shape
        encoder = RleEncoder(f"mask of fragment {fid!r}")
        with atomic_open(prob_path, "wb") as prob_file, atomic_open(mask_path, "wb") as mask_file:
            prob_png = StreamingPngWriter(prob_file, height, width)
            mask_png = StreamingPngWriter(mask_file, height, width)
            bands = full_resolution_bands(fragment["prob"], fragment["valid"], full_shape, BAND_PIXELS)
            for prob, valid in bands:
                if not np.isfinite(prob).all():
                    raise ValueError(f"InkPredictionWriter: the probability map of fragment {fid!r} has NaN/inf")
                scaled = np.clip(prob, 0.0, 1.0)  # a new array: the module's map is never modified
                scaled *= 255.0
                prob_png.write_rows(np.rint(scaled, out=scaled).astype(np.uint8))
                del scaled
                mask = (prob > threshold) & valid
                mask_png.write_rows(mask.view(np.uint8) * np.uint8(255))
                encoder.update(mask)
            prob_png.close()
            mask_png.close()
        self.written_paths += [prob_path, mask_path]
        return encoder.finish()
