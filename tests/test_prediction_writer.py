"""InkPredictionWriter (callbacks/prediction_writer.py): PNGs, submission.csv, formats, upsampling, failure modes."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from PIL import Image
from torch.utils.data import DataLoader

from callbacks import prediction_writer
from callbacks.prediction_writer import InkPredictionWriter
from modules.evaluation import EvalConfig
from modules.resample import full_resolution_bands
from utils.png import StreamingPngWriter
from utils.rle import rle_decode


class StandIn(pl.LightningModule):
    """Sets `last_eval_maps` in its own predict-epoch-end hook, as InkModule does."""

    def __init__(self, maps: dict[str, dict[str, np.ndarray]], threshold: float = 0.5, stage: str = "predict"):
        super().__init__()
        self.eval_config = EvalConfig(threshold=threshold)  # what InkModule exposes to callbacks
        self.maps = maps
        self.stage = stage
        self.steps = 0
        self.last_eval_maps: dict[str, dict[str, np.ndarray]] = {}
        self.last_eval_stage: str | None = None

    def predict_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        self.steps += 1
        return batch

    def on_predict_epoch_end(self) -> None:
        self.last_eval_maps = self.maps
        self.last_eval_stage = self.stage


class Shapes(pl.LightningDataModule):
    def __init__(self, shapes: dict[str, tuple[int, int]]) -> None:
        super().__init__()
        self.shapes = shapes

    def fragment_shapes(self, stage: str) -> dict[str, tuple[int, int]]:
        assert stage == "predict"
        return self.shapes

    def predict_dataloader(self) -> DataLoader:
        return DataLoader(torch.arange(3.0), batch_size=2)


def _maps(shape: tuple[int, int], seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    valid = np.zeros(shape, dtype=bool)
    valid[1:-1, 2:] = True
    return {"prob": rng.random(shape, dtype=np.float32), "valid": valid}


def _predict(module: pl.LightningModule, writer: InkPredictionWriter, shapes: dict[str, tuple[int, int]]) -> None:
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[writer],
    )
    trainer.predict(module, datamodule=Shapes(shapes), return_predictions=False)


def _png(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        assert image.mode == "L"
        return np.array(image)


def _submission(path: Path) -> dict[str, str]:
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["Id", "Predicted"]
    return {fid: rle for fid, rle in rows[1:]}


def test_writes_pngs_and_a_submission_that_decodes_to_the_masks(tmp_path: Path) -> None:
    shapes = {"frag_a": (13, 17), "b": (9, 6)}
    maps = {fid: _maps(shape, i) for i, (fid, shape) in enumerate(shapes.items())}
    out = tmp_path / "deep" / "predictions"
    writer = InkPredictionWriter(output_dir=str(out))
    _predict(StandIn(maps, threshold=0.3), writer, shapes)

    names = {"submission.csv"} | {f"{fid}_{kind}.png" for fid in shapes for kind in ("prediction", "mask")}
    assert {p.name for p in out.iterdir()} == names  # nothing else, no temporary files
    assert sorted(writer.written_paths) == sorted(out / n for n in names)
    submission = _submission(out / "submission.csv")
    assert list(submission) == list(shapes)
    for fid, shape in shapes.items():
        prob = _png(out / f"{fid}_prediction.png")
        mask = _png(out / f"{fid}_mask.png")
        assert prob.shape == mask.shape == shape
        assert np.abs(prob.astype(np.float32) - maps[fid]["prob"] * 255).max() <= 0.5 + 1e-3
        expected = (maps[fid]["prob"] > 0.3) & maps[fid]["valid"]  # the module's eval_config.threshold
        assert expected.any() and not expected.all()
        assert np.array_equal(mask, expected.astype(np.uint8) * 255)
        assert np.array_equal(rle_decode(submission[fid], shape), expected)


def test_explicit_threshold_wins_and_the_submission_can_be_skipped(tmp_path: Path) -> None:
    maps = {"a": _maps((8, 8), 0)}
    writer = InkPredictionWriter(output_dir=str(tmp_path), threshold=0.8, write_submission=False)
    _predict(StandIn(maps, threshold=0.3), writer, {"a": (8, 8)})
    assert not (tmp_path / "submission.csv").exists()
    expected = (maps["a"]["prob"] > 0.8) & maps["a"]["valid"]
    assert np.array_equal(_png(tmp_path / "a_mask.png") > 0, expected)


def test_formats_choose_the_outputs(tmp_path: Path) -> None:
    maps = {"a": _maps((8, 8), 0)}
    writer = InkPredictionWriter(output_dir=str(tmp_path / "rle"), formats=["rle"])
    _predict(StandIn(maps), writer, {"a": (8, 8)})
    assert writer.written_paths == [tmp_path / "rle" / "submission.csv"]
    expected = (maps["a"]["prob"] > 0.5) & maps["a"]["valid"]
    assert np.array_equal(rle_decode(_submission(tmp_path / "rle" / "submission.csv")["a"], (8, 8)), expected)
    writer = InkPredictionWriter(output_dir=str(tmp_path / "png"), formats=["png"])
    _predict(StandIn(maps), writer, {"a": (8, 8)})
    assert sorted(p.name for p in (tmp_path / "png").iterdir()) == ["a_mask.png", "a_prediction.png"]
    assert InkPredictionWriter(formats=["png", "rle"], write_submission=False).formats == ["png"]
    for bad in ([], ["png", "png"], ["tiff"]):
        with pytest.raises(ValueError, match="formats"):
            InkPredictionWriter(formats=bad)
    with pytest.raises(ValueError, match="formats"):
        InkPredictionWriter(formats=["rle"], write_submission=False)  # nothing left to write


def test_maps_at_lower_resolution_are_upsampled_to_the_fragment_size(tmp_path: Path) -> None:
    # stitch_stride 2: stored maps are ceil(H / 2) x ceil(W / 2).
    full = (21, 30)
    ramp = np.tile(np.linspace(0.0, 1.0, 15, dtype=np.float32), (11, 1))
    valid = np.ones((11, 15), dtype=bool)
    valid[:3] = False
    writer = InkPredictionWriter(output_dir=str(tmp_path), threshold=0.5)
    _predict(StandIn({"a": {"prob": ramp, "valid": valid}}), writer, {"a": full})

    prob = _png(tmp_path / "a_prediction.png").astype(np.float32) / 255
    mask = _png(tmp_path / "a_mask.png") > 0
    assert prob.shape == mask.shape == full
    # Bilinear between block centres: every row is the same non-decreasing ramp from 0 to 1.
    assert np.array_equal(prob, np.tile(prob[0], (full[0], 1)))
    assert np.all(np.diff(prob[0]) >= 0) and prob[0, 0] == 0 and prob[0, -1] == 1
    # Stored column j is centred on full column 2j + 0.5, so full column 2j + 1 is a quarter of the way on.
    assert prob[0, 15] == pytest.approx(np.interp(7.25, np.arange(15), ramp[0]), abs=1 / 255)
    # valid is nearest: stored rows 0..2 cover full rows 0..5.
    assert not mask[:6].any()
    assert np.array_equal(mask[6:], np.tile(prob[0] > 0.5, (full[0] - 6, 1)))
    submission = _submission(tmp_path / "submission.csv")
    assert np.array_equal(rle_decode(submission["a"], full), mask)


def test_unwritable_output_dir_fails_before_prediction_and_writes_nothing(tmp_path: Path) -> None:
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    out = blocker / "predictions"  # tests run as root, so a read-only chmod would not stop writing
    module = StandIn({"a": _maps((8, 8), 0)})
    with pytest.raises(NotADirectoryError, match=str(out)):
        _predict(module, InkPredictionWriter(output_dir=str(out)), {"a": (8, 8)})
    assert module.steps == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file"]


def test_failure_while_writing_leaves_no_partial_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    old = b"previous run"
    (tmp_path / "a_prediction.png").write_bytes(old)
    calls = {"n": 0}
    original = StreamingPngWriter.write_rows

    def failing(self: StreamingPngWriter, rows: np.ndarray) -> None:
        calls["n"] += 1
        if calls["n"] == 4:  # midway: after some rows of both images went to disk
            raise OSError("disk full")
        original(self, rows)

    monkeypatch.setattr(StreamingPngWriter, "write_rows", failing)
    monkeypatch.setattr(prediction_writer, "BAND_PIXELS", 16)  # one row per band
    writer = InkPredictionWriter(output_dir=str(tmp_path))
    with pytest.raises(OSError, match="disk full"):
        _predict(StandIn({"a": _maps((8, 16), 0)}), writer, {"a": (8, 16)})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_prediction.png"]
    assert (tmp_path / "a_prediction.png").read_bytes() == old


def test_bad_maps_are_rejected_without_output(tmp_path: Path) -> None:
    nan = _maps((8, 8), 0)
    nan["prob"][3, 3] = np.nan
    with pytest.raises(ValueError, match="'a'.*NaN"):
        _predict(StandIn({"a": nan}), InkPredictionWriter(output_dir=str(tmp_path)), {"a": (8, 8)})
    with pytest.raises(ValueError, match="file name"):
        _predict(StandIn({"x/y": _maps((8, 8), 0)}), InkPredictionWriter(output_dir=str(tmp_path)), {"x/y": (8, 8)})
    with pytest.raises(ValueError, match="'a'.*not among"):
        _predict(StandIn({"a": _maps((8, 8), 0)}), InkPredictionWriter(output_dir=str(tmp_path)), {"b": (8, 8)})
    with pytest.raises(ValueError, match="cannot be upsampled"):
        _predict(StandIn({"a": _maps((8, 8), 0)}), InkPredictionWriter(output_dir=str(tmp_path)), {"a": (4, 8)})
    bad_valid = {"prob": np.zeros((8, 8), np.float32), "valid": np.zeros((8, 8), np.uint8)}
    with pytest.raises(ValueError, match="'valid'.*bool"):
        _predict(StandIn({"a": bad_valid}), InkPredictionWriter(output_dir=str(tmp_path)), {"a": (8, 8)})
    assert list(tmp_path.iterdir()) == []


def test_missing_or_stale_maps_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="no stitched prediction maps.*'validate'"):
        _predict(StandIn({"a": _maps((8, 8), 0)}, stage="validate"), InkPredictionWriter(str(tmp_path)), {})
    with pytest.raises(RuntimeError, match="no stitched prediction maps"):
        _predict(StandIn({}), InkPredictionWriter(str(tmp_path)), {})

    class NoMaps(pl.LightningModule):
        def predict_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
            raise AssertionError("must fail before predicting")

    with pytest.raises(TypeError, match="last_eval_maps"):
        _predict(NoMaps(), InkPredictionWriter(str(tmp_path)), {})
    with pytest.raises(ValueError, match="threshold"):
        InkPredictionWriter(threshold=1.0)


class _PredictTiles(pl.LightningDataModule):
    """One 50 × 64 fragment cut into overlapping 32 × 32 predict tiles (the last row flush with the edge)."""

    tile_size = 32

    def __init__(self) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(0)
        self.volume = torch.rand(4, 50, 64, generator=gen)
        self.valid = torch.zeros(50, 64)
        self.valid[2:-3, 5:] = 1

    def fragment_shapes(self, stage: str) -> dict[str, tuple[int, int]]:
        return {"seg": (50, 64)}

    def predict_dataloader(self) -> DataLoader:
        items = [
            {
                "image": self.volume[:, y : y + 32, x : x + 32],
                "valid": self.valid[None, y : y + 32, x : x + 32],
                "fragment": "seg",
                "yx": torch.tensor([y, x]),
            }
            for y in (0, 16, 18)
            for x in (0, 16, 32)
        ]
        return DataLoader(items, batch_size=4)


def test_with_ink_module_at_half_resolution(tmp_path: Path) -> None:
    from modules.evaluation import EvalConfig
    from modules.ink_module import InkModule
    from tests.test_ink_module import TINY

    torch.manual_seed(0)
    module = InkModule(**TINY, eval=EvalConfig(stitch_stride=2))
    writer = InkPredictionWriter(output_dir=str(tmp_path), threshold=0.5)
    trainer = pl.Trainer(
        accelerator="cpu", devices=1, logger=False, enable_progress_bar=False, enable_model_summary=False,
        callbacks=[writer],
    )  # fmt: skip
    trainer.predict(module, datamodule=_PredictTiles(), return_predictions=False)

    maps = module.last_eval_maps["seg"]
    assert maps["prob"].shape == (25, 32)
    bands = list(full_resolution_bands(maps["prob"], maps["valid"], (50, 64)))
    prob = np.concatenate([p for p, _ in bands])
    expected = (prob > 0.5) & np.concatenate([v for _, v in bands])
    assert expected.any() and not expected[:2].any() and not expected[:, :4].any()  # papyrus mask applied
    written = _png(tmp_path / "seg_prediction.png")
    assert written.shape == (50, 64)
    assert np.abs(written.astype(np.float32) - prob * 255).max() <= 0.5 + 1e-3
    assert np.array_equal(_png(tmp_path / "seg_mask.png") > 0, expected)
    assert np.array_equal(rle_decode(_submission(tmp_path / "submission.csv")["seg"], (50, 64)), expected)


def test_the_writer_reads_the_threshold_and_stride_of_an_ink_module() -> None:
    from modules.ink_module import InkModule

    module = InkModule(num_slices=4, eval=EvalConfig(threshold=0.3, stitch_stride=2))
    assert InkPredictionWriter()._resolve_threshold(module) == pytest.approx(0.3)
    maps = {"a": {"prob": np.zeros((4, 4), np.float32), "valid": np.ones((4, 4), bool)}}
    with pytest.warns(UserWarning, match="1/2 resolution"):
        assert InkPredictionWriter._full_shapes(object(), module, maps) == {"a": (4, 4)}
