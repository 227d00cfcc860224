"""InkPredictionWriter: writes the stitched prediction of every fragment in the chosen output formats.

The callback finds the maps, their full sizes and the threshold, and upsamples each fragment once in row bands
(`modules.resample`); what is written from the bands is up to the formats of `utils.prediction_formats`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextlib import ExitStack
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
from pytorch_lightning.utilities import rank_zero_warn

from modules.resample import BAND_PIXELS, full_resolution_bands
from utils.atomic import ensure_writable_dir
from utils.checks import check_filename_part, check_threshold
from utils.prediction_formats import FORMATS, FragmentOutput, PredictionBand, write_submission_csv

DEFAULT_FORMATS = ("png", "rle")


class InkPredictionWriter(pl.Callback):
    """Writes each predicted fragment as ``<id>_prediction.png`` and ``<id>_mask.png``, plus ``submission.csv``.

    After ``trainer.predict`` the module's stitched maps (`InkModule.last_eval_maps`) are upsampled to each
    fragment's full resolution (``datamodule.fragment_shapes("predict")``) in row bands and written on rank
    zero, in each of `formats` (`utils.prediction_formats.FORMATS`):

    - ``png``: ``<output_dir>/<id>_prediction.png``, probabilities as 8-bit grey, ``round(255 * p)``, and
      ``<output_dir>/<id>_mask.png``, 255 where ``p > threshold`` inside the valid (papyrus, covered) map, else 0;
    - ``rle``: ``<output_dir>/submission.csv``, ``Id,Predicted`` with one row per fragment, the run-length
      encoding (`utils.rle`) of that mask, written after all fragments.

    Every file is written under a temporary name and renamed when complete, so a failure leaves no partial
    file. The output folder is created and checked for writability when prediction starts, before any
    compute. The paths written are kept in `written_paths` (rank zero; empty elsewhere).

    Args:
        output_dir: Folder for the outputs (created with parents).
        threshold: Ink probability threshold of the masks; None: the module's ``eval_config.threshold``, else 0.5.
        write_submission: Also write ``submission.csv``; False drops ``rle`` from `formats` (older configs).
        formats: Names of the output formats (`utils.prediction_formats.FORMATS`); None: ``["png", "rle"]``.

    Raises:
        ValueError: A threshold outside (0, 1), or no, repeated or unknown formats.
    """

    def __init__(
        self,
        output_dir: str = "predictions",
        threshold: float | None = None,
        write_submission: bool = True,
        formats: Sequence[str] | None = None,
    ) -> None:
        super().__init__()
        if threshold is not None:
            check_threshold("InkPredictionWriter threshold", threshold)
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
        submission: list[tuple[str, str]] = []
        for fid, fragment in maps.items():
            out = FragmentOutput(self.output_dir, fid, shapes[fid], self.written_paths, submission)
            self._write_fragment(out, fragment, threshold)
        if submission:
            self.written_paths.append(write_submission_csv(self.output_dir, submission))

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
        threshold = float(getattr(_eval_config(pl_module), "threshold", 0.5))
        return check_threshold("InkPredictionWriter: the module's eval_config.threshold", threshold)

    @staticmethod
    def _full_shapes(
        trainer: pl.Trainer, pl_module: pl.LightningModule, maps: Mapping[str, Mapping[str, np.ndarray]]
    ) -> dict[str, tuple[int, int]]:
        datamodule = getattr(trainer, "datamodule", None)
        fragment_shapes = getattr(datamodule, "fragment_shapes", None)
        if not callable(fragment_shapes):
            stride = getattr(_eval_config(pl_module), "stitch_stride", 1)
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

    def _write_fragment(self, out: FragmentOutput, fragment: Mapping[str, np.ndarray], threshold: float) -> None:
        """Upsamples one fragment band by band and feeds every band to each format."""
        with ExitStack() as stack:
            writers = [stack.enter_context(FORMATS[name](out)) for name in self.formats]
            for prob, valid in full_resolution_bands(fragment["prob"], fragment["valid"], out.shape, BAND_PIXELS):
                if not np.isfinite(prob).all():
                    raise ValueError(
                        f"InkPredictionWriter: the probability map of fragment {out.fragment_id!r} has NaN/inf"
                    )
                band = PredictionBand(prob=prob, mask=(prob > threshold) & valid)
                for write in writers:
                    write(band)


def _eval_config(pl_module: pl.LightningModule) -> object | None:
    """The module's evaluation settings (`InkModule.eval_config`), or None for a module without them."""
    return getattr(pl_module, "eval_config", None)
