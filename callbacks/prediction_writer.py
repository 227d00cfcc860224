"""InkPredictionWriter: whole-segment prediction in bounded memory, shared across DDP processes, resumable.

The writer turns the tile probabilities `InkModule.predict_step` returns into each segment's outputs, band by band:

1. ``setup``: the segments are cut into row bands (`modules.prediction.band_plan`); bands an interrupted run wrote are
   kept (`utils.band_store`); each rank gets a contiguous, tile-balanced run of the rest, and the data module is told
   which tiles this rank predicts (``select_predict_tiles``). Lightning's DDP runs the ranks; nothing else schedules.
2. ``on_predict_batch_end``: tiles are blended into their bands (`modules.prediction.band_stitching`); a band whose
   last tile arrived is written to disk and dropped, so memory holds a few bands whatever the segment's size.
3. ``on_predict_end``: after all ranks finished, rank zero reads each complete segment's bands in order and feeds
   them to the output formats (`utils.prediction_formats`), then deletes the bands.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch

from modules.evaluation.windows import window_weights
from modules.prediction.band_plan import DEFAULT_BAND_PIXELS, PredictionLayout, SegmentBands, band_height, plan_rank
from modules.prediction.band_stitching import BandStitcher
from utils.atomic import ensure_writable_dir
from utils.band_store import BandStore
from utils.checks import check_filename_part, check_int, check_threshold
from utils.memory import release_free_heap
from utils.prediction_formats import FORMATS, FragmentOutput, PredictionBand, write_submission_csv

DEFAULT_FORMATS = ("tiff", "png", "rle")


class InkPredictionWriter(pl.Callback):
    """Writes each predicted segment in the chosen formats, from bands stitched on the fly.

    Outputs per segment (`utils.prediction_formats.FORMATS`):

    - ``tiff``: ``<output_dir>/<id>_prediction.tif``, 8-bit probabilities as a tiled, compressed BigTIFF pyramid;
    - ``png``: ``<id>_prediction.png`` (8-bit probabilities) and ``<id>_mask.png`` (255 where ``p > threshold``
      inside the valid map: papyrus covered by a tile);
    - ``rle``: a row of ``<output_dir>/submission.csv`` (Kaggle run-length encoding of the mask);
    - ``zarr``: ``<id>_prediction.zarr``, the probabilities as an OME-Zarr multiscale group.

    Every file appears only when complete. An interrupted run leaves its finished bands in ``<output_dir>/.bands``;
    the same command run again predicts only the missing bands (``resume``), with any number of processes.

    Args:
        output_dir: Folder for the outputs (created with parents).
        threshold: Ink probability threshold of the masks; None: the module's ``eval_config.threshold``, else 0.5.
        write_submission: Also write ``submission.csv``; False drops ``rle`` from `formats` (older configs).
        formats: Names of the output formats; None: ``["tiff", "png", "rle"]``.
        band_pixels: About how many pixels one band holds (rows = band_pixels / width): the memory per band in
            flight is 9 bytes per pixel.
        resume: Reuse the band files an interrupted run left for the same segments, tiles and weights.

    Raises:
        ValueError: A threshold outside (0, 1), no, repeated or unknown formats, or a non-positive band size.
    """

    def __init__(
        self,
        output_dir: str = "predictions",
        threshold: float | None = None,
        write_submission: bool = True,
        formats: Sequence[str] | None = None,
        band_pixels: int = DEFAULT_BAND_PIXELS,
        resume: bool = True,
    ) -> None:
        super().__init__()
        if threshold is not None:
            check_threshold("InkPredictionWriter threshold", threshold)
        check_int("InkPredictionWriter band_pixels", band_pixels, minimum=1)
        names = list(DEFAULT_FORMATS if formats is None else formats)
        if not write_submission:
            names = [n for n in names if n != "rle"]
        if not names or len(set(names)) != len(names) or any(n not in FORMATS for n in names):
            raise ValueError(
                f"InkPredictionWriter formats={names!r}: need one or more distinct names of {sorted(FORMATS)}"
            )
        self.output_dir = Path(output_dir)
        self.threshold = threshold
        self.write_submission = write_submission
        self.formats = names
        self.band_pixels = band_pixels
        self.resume = resume
        self.written_paths: list[Path] = []
        self.resumed_bands = 0
        self._segments: dict[str, SegmentBands] = {}
        self._stores: dict[str, BandStore] = {}
        self._stitcher: BandStitcher | None = None

    # ------------------------------------------------------------------------------------------ hooks

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Plans the bands and tells the data module which tiles this rank predicts (before any loader exists)."""
        if stage != "predict":
            return
        self.written_paths = []
        self._check_output_dir(trainer)
        layout = _layout(trainer)
        for fid in layout.fragment_ids:
            check_filename_part(fid, "fragment id")
        weights = _weights_identity(trainer, pl_module)
        window = getattr(_eval_config(pl_module), "window", "hann")
        self._segments, self._stores = {}, {}
        for i, fid in enumerate(layout.fragment_ids):
            shape = (int(layout.shapes[i][0]), int(layout.shapes[i][1]))
            segment = SegmentBands(fid, shape, band_height(shape[1], self.band_pixels))
            mine = layout.windows[layout.windows[:, 0] == i]
            identity = {
                "shape": shape,
                "band_rows": segment.rows,
                "tile_size": layout.tile_size,
                "tiles": hashlib.sha1(np.ascontiguousarray(mine, dtype=np.int64).tobytes()).hexdigest(),
                "source": layout.sources[i] if layout.sources else None,
                "window": window,
                "tta": bool(getattr(_eval_config(pl_module), "tta", False)),
                "weights": weights,
            }
            self._segments[fid] = segment
            self._stores[fid] = BandStore(self.output_dir, fid, identity)
        if trainer.is_global_zero:
            self.resumed_bands = sum(store.prepare(self.resume) for store in self._stores.values())
        trainer.strategy.barrier("InkPredictionWriter.setup")
        done = {fid: store.done() for fid, store in self._stores.items()}
        segments = [self._segments[fid] for fid in layout.fragment_ids]
        plan = plan_rank(segments, layout.windows, layout.tile_size, done, trainer.global_rank, trainer.world_size)
        trainer.datamodule.select_predict_tiles(plan.indices)
        blend = window_weights(layout.tile_size, window).numpy()
        self._stitcher = BandStitcher(self._segments, plan.bands, blend, self._write_band)

    def on_predict_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        """Blends the batch's tile probabilities into their bands; writes the bands it completes."""
        if self._stitcher is None:
            raise RuntimeError("InkPredictionWriter: predicting without setup('predict') having planned the bands")
        if not isinstance(outputs, dict) or not {"prob", "valid", "fragment", "yx"} <= set(outputs):
            raise TypeError(
                "InkPredictionWriter needs predict_step to return {'prob', 'valid', 'fragment', 'yx'} per tile "
                f"(as InkModule does); got {type(outputs).__name__}"
            )
        prob = _numpy(outputs["prob"])[:, 0]
        valid = _numpy(outputs["valid"])[:, 0]
        self._stitcher.add(list(outputs["fragment"]), _numpy(outputs["yx"]).astype(np.int64), prob, valid)
        release_free_heap()  # freed batch buffers back to the OS: resident memory stays at what is in use

    def on_predict_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Writes the last bands; then rank zero writes every complete segment's outputs and removes its bands."""
        stitcher, self._stitcher = self._stitcher, None
        if stitcher is not None:
            stitcher.finish()
        trainer.strategy.barrier("InkPredictionWriter.on_predict_end")
        if not trainer.is_global_zero:
            return
        threshold = self._resolve_threshold(pl_module)
        submission: list[tuple[str, str]] = []
        for fid, store in self._stores.items():
            segment = self._segments[fid]
            missing = sorted(set(range(segment.count)) - store.done())
            if missing:
                raise RuntimeError(
                    f"InkPredictionWriter: segment {fid!r} lacks band(s) {missing[:10]} after prediction; "
                    f"run the same command again to predict what is missing (finished bands are kept in {store.folder})"
                )
            out = FragmentOutput(self.output_dir, fid, segment.shape, self.written_paths, submission)
            self._write_segment(out, store, segment, threshold)
            store.remove()
        if submission:
            self.written_paths.append(write_submission_csv(self.output_dir, submission))

    # ------------------------------------------------------------------------------------------ helpers

    def _check_output_dir(self, trainer: pl.Trainer) -> None:
        """Creates/checks the output folder on rank zero; every rank fails together, before any compute."""
        failure: OSError | None = None
        if trainer.is_global_zero:
            try:
                ensure_writable_dir(self.output_dir, "InkPredictionWriter output_dir")
            except OSError as e:
                failure = e
        message = trainer.strategy.broadcast(None if failure is None else str(failure), src=0)
        if failure is not None:
            raise failure
        if message is not None:
            raise OSError(f"on rank zero: {message}")

    def _write_band(self, fid: str, k: int, rows: tuple[int, int], prob: np.ndarray, valid: np.ndarray) -> None:
        if not np.isfinite(prob).all():
            raise ValueError(f"InkPredictionWriter: NaN/inf probabilities in rows {rows[0]}..{rows[1]} of {fid!r}")
        self._stores[fid].write(k, prob, valid)

    def _write_segment(self, out: FragmentOutput, store: BandStore, segment: SegmentBands, threshold: float) -> None:
        with ExitStack() as stack:
            writers = [stack.enter_context(FORMATS[name](out)) for name in self.formats]
            for k in range(segment.count):
                prob, valid = store.read(k)
                band = PredictionBand(prob=prob, mask=(prob > threshold) & valid)
                for write in writers:
                    write(band)

    def _resolve_threshold(self, pl_module: pl.LightningModule) -> float:
        if self.threshold is not None:
            return self.threshold
        threshold = float(getattr(_eval_config(pl_module), "threshold", 0.5))
        return check_threshold("InkPredictionWriter: the module's eval_config.threshold", threshold)


def _layout(trainer: pl.Trainer) -> PredictionLayout:
    datamodule = getattr(trainer, "datamodule", None)
    if not callable(getattr(datamodule, "prediction_layout", None)) or not callable(
        getattr(datamodule, "select_predict_tiles", None)
    ):
        raise TypeError(
            "InkPredictionWriter needs a data module with prediction_layout() and select_predict_tiles() "
            f"(such as InkDataModule); got {type(datamodule).__name__}. Pass datamodule=..., not bare dataloaders."
        )
    return datamodule.prediction_layout()


def _weights_identity(trainer: pl.Trainer, pl_module: pl.LightningModule) -> str:
    """The checkpoint file (path, size, time) when predicting from one, else a hash of the module's weights."""
    ckpt = getattr(trainer, "ckpt_path", None)
    if ckpt:
        path = Path(ckpt).resolve()
        stat = path.stat()
        return f"{path}:{stat.st_size}:{stat.st_mtime_ns}"
    digest = hashlib.sha1()
    for name, tensor in sorted(pl_module.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _numpy(value: Any) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        return value.detach().float().cpu().numpy() if value.is_floating_point() else value.detach().cpu().numpy()
    return np.asarray(value)


def _eval_config(pl_module: pl.LightningModule) -> object | None:
    """The module's evaluation settings (`InkModule.eval_config`), or None for a module without them."""
    return getattr(pl_module, "eval_config", None)
