"""InkPredictionWriter (callbacks/prediction_writer.py): band-wise stitching, formats, resuming, failure modes."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import tifffile
import torch
from PIL import Image
from torch.utils.data import DataLoader

from callbacks.prediction_writer import InkPredictionWriter
from datamodules.tiling import grid_positions
from modules.evaluation import EvalConfig
from modules.evaluation.stitching import FragmentStitcher
from modules.prediction.band_plan import PredictionLayout
from utils.png import StreamingPngWriter
from utils.rle import rle_decode

TILE = 16


class Segments(pl.LightningDataModule):
    """Segments whose tiles carry their own "probabilities" (smooth random maps), cut at tile 16, step 8."""

    def __init__(self, shapes: dict[str, tuple[int, int]], seed: int = 0) -> None:
        super().__init__()
        rng = np.random.default_rng(seed)
        self.ids = list(shapes)
        self.truth, self.valid, rows = {}, {}, []
        for i, (fid, (h, w)) in enumerate(shapes.items()):
            self.truth[fid] = rng.random((h, w), dtype=np.float32)
            valid = np.ones((h, w), np.float32)
            valid[: h // 5] = 0  # outside the papyrus
            self.valid[fid] = valid
            ys, xs = grid_positions(0, h, TILE, 8), grid_positions(0, w, TILE, 8)
            rows += [(i, int(y), int(x)) for y in ys for x in xs]
        self.windows = np.array(rows, dtype=np.int64)
        self.selection: np.ndarray | None = None
        self.shapes = shapes

    def prediction_layout(self) -> PredictionLayout:
        return PredictionLayout(self.ids, [self.shapes[f] for f in self.ids], self.windows, TILE)

    def select_predict_tiles(self, indices: np.ndarray | None) -> None:
        self.selection = indices

    def items(self, indices: np.ndarray) -> list[dict]:
        out = []
        for i in indices:
            s, y, x = (int(v) for v in self.windows[i])
            fid = self.ids[s]
            out.append(
                {
                    "prob": torch.from_numpy(self.truth[fid][None, y : y + TILE, x : x + TILE].copy()),
                    "valid": torch.from_numpy(self.valid[fid][None, y : y + TILE, x : x + TILE].copy()),
                    "fragment": fid,
                    "yx": torch.tensor([y, x]),
                }
            )
        return out

    def predict_dataloader(self) -> DataLoader:
        chosen = np.arange(len(self.windows)) if self.selection is None else self.selection
        return DataLoader(self.items(chosen), batch_size=5)

    def stitched(self) -> dict[str, dict[str, np.ndarray]]:
        """The same tiles blended by the whole-fragment stitcher (the reference)."""
        stitcher = FragmentStitcher(self.shapes, TILE)
        for batch in DataLoader(self.items(np.arange(len(self.windows))), batch_size=7):
            stitcher.add(list(batch["fragment"]), batch["yx"], batch["prob"], batch["valid"])
        return {fid: stitcher.result(fid) for fid in self.ids}


class Stopped(Exception):
    """Stands for a run killed midway (a lost node, a time limit)."""


class StandIn(pl.LightningModule):
    """Returns the tiles' own probabilities, as InkModule.predict_step returns its model's."""

    def __init__(self, threshold: float = 0.5, fail_at: int | None = None) -> None:
        super().__init__()
        self.eval_config = EvalConfig(threshold=threshold)
        self.fail_at = fail_at
        self.steps = 0

    def predict_step(self, batch: dict, batch_idx: int) -> dict:
        if self.fail_at is not None and self.steps == self.fail_at:
            raise Stopped("the run was stopped")
        self.steps += 1
        return {k: batch[k] for k in ("prob", "valid", "fragment", "yx")}


def _predict(module: pl.LightningModule, writer: InkPredictionWriter, data: pl.LightningDataModule) -> None:
    trainer = pl.Trainer(
        accelerator="cpu", devices=1, logger=False, enable_progress_bar=False, enable_model_summary=False,
        callbacks=[writer],
    )  # fmt: skip
    trainer.predict(module, datamodule=data, return_predictions=False)


def _png(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        assert image.mode == "L"
        return np.array(image)


def _submission(path: Path) -> dict[str, str]:
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["Id", "Predicted"]
    return {fid: rle for fid, rle in rows[1:]}


def _outputs(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


SHAPES = {"seg_a": (70, 45), "b": (33, 20)}


def test_bands_give_the_whole_fragment_stitch_in_every_format(tmp_path: Path) -> None:
    data = Segments(SHAPES)
    out = tmp_path / "deep" / "predictions"
    writer = InkPredictionWriter(output_dir=str(out), band_pixels=16 * 45, formats=["tiff", "png", "rle", "zarr"])
    _predict(StandIn(threshold=0.3), writer, data)

    names = {"submission.csv"} | {f"{f}_{k}" for f in SHAPES for k in ("prediction.png", "mask.png", "prediction.tif")}
    names |= {f"{f}_prediction.zarr" for f in SHAPES}
    assert {p.name for p in out.iterdir()} == names  # no band files, no temporary files left
    assert sorted(writer.written_paths) == sorted(out / n for n in names)
    reference = data.stitched()
    submission = _submission(out / "submission.csv")
    for fid, shape in SHAPES.items():
        expected_prob = reference[fid]["prob"]
        grey = _png(out / f"{fid}_prediction.png")
        assert grey.shape == shape
        # float16 band files: within one grey level of the float32 whole-fragment stitch.
        assert np.abs(grey.astype(np.float32) - expected_prob * 255).max() <= 0.5 + 255 / 2048
        expected = (expected_prob > 0.3) & reference[fid]["valid"]
        mask = _png(out / f"{fid}_mask.png") > 0
        assert expected.any() and not expected.all()
        assert (mask != expected).mean() < 0.002  # only float16 rounding at the threshold may differ
        assert np.array_equal(rle_decode(submission[fid], shape), mask)
        with tifffile.TiffFile(out / f"{fid}_prediction.tif") as tif:
            assert tif.is_bigtiff and tif.pages[0].is_tiled
            levels = tif.series[0].levels
            assert np.array_equal(levels[0].asarray(), grey)
        import zarr

        group = zarr.open_group(str(out / f"{fid}_prediction.zarr"), mode="r")
        assert np.array_equal(group["0"][:], grey)
        assert group.attrs["multiscales"][0]["datasets"][0]["path"] == "0"


def test_pyramid_levels_halve_until_one_tile(tmp_path: Path) -> None:
    from utils.pyramid import level_shapes, write_tiff_pyramid

    image = np.random.default_rng(0).integers(0, 256, (600, 1100), dtype=np.uint8)
    assert level_shapes(image.shape) == [(600, 1100), (300, 550), (150, 275), (75, 138)]
    assert write_tiff_pyramid(tmp_path / "p.tif", image, tmp_path) == 4
    with tifffile.TiffFile(tmp_path / "p.tif") as tif:
        levels = [level.asarray() for level in tif.series[0].levels]
    assert [lv.shape for lv in levels] == level_shapes(image.shape)
    assert np.array_equal(levels[0], image)
    block = image[:2, :2].astype(np.float32).mean()
    assert levels[1][0, 0] == np.rint(block)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.tif"]  # scratch levels removed


def test_an_interrupted_run_resumes_with_only_the_missing_bands(tmp_path: Path) -> None:
    data = Segments(SHAPES, seed=1)
    whole = tmp_path / "whole"
    _predict(StandIn(), InkPredictionWriter(output_dir=str(whole), band_pixels=16 * 45), data)

    out = tmp_path / "resumed"
    stopped = StandIn(fail_at=6)
    with pytest.raises(Stopped):
        _predict(stopped, InkPredictionWriter(output_dir=str(out), band_pixels=16 * 45), Segments(SHAPES, seed=1))
    kept = sorted((out / ".bands" / "seg_a").glob("band_*.npz"))
    assert kept and not list(out.glob("*.png"))  # some bands on disk, no output yet
    again = StandIn()
    writer = InkPredictionWriter(output_dir=str(out), band_pixels=16 * 45)
    _predict(again, writer, Segments(SHAPES, seed=1))
    assert writer.resumed_bands == len(kept)
    assert again.steps < -(-len(data.windows) // 5)  # fewer batches than the whole prediction
    assert _outputs(out) == _outputs(whole)
    assert not (out / ".bands").exists()


def test_bands_of_other_tiles_or_weights_are_not_reused(tmp_path: Path) -> None:
    out = tmp_path / "p"
    with pytest.raises(Stopped):
        _predict(StandIn(fail_at=6), InkPredictionWriter(output_dir=str(out), band_pixels=16 * 45), Segments(SHAPES))
    other = StandIn()
    other.extra = torch.nn.Parameter(torch.ones(1))  # other weights: a different model
    writer = InkPredictionWriter(output_dir=str(out), band_pixels=16 * 45)
    _predict(other, writer, Segments(SHAPES))
    assert writer.resumed_bands == 0
    with pytest.raises(Stopped):
        _predict(StandIn(fail_at=6), InkPredictionWriter(output_dir=str(out), band_pixels=16 * 45), Segments(SHAPES))
    writer = InkPredictionWriter(output_dir=str(out), band_pixels=16 * 45, resume=False)
    _predict(StandIn(), writer, Segments(SHAPES))
    assert writer.resumed_bands == 0


def test_ranks_share_the_bands_and_agree_with_one_process(tmp_path: Path) -> None:
    """Each rank's plan, run on its own (as DDP ranks do), writes its bands; together they equal one process's."""
    from modules.evaluation.windows import window_weights
    from modules.prediction.band_plan import SegmentBands, band_height, plan_rank
    from modules.prediction.band_stitching import BandStitcher

    data = Segments(SHAPES, seed=2)
    segments = [SegmentBands(f, SHAPES[f], band_height(SHAPES[f][1], 16 * 45)) for f in data.ids]
    weights = window_weights(TILE).numpy()

    def run(world: int) -> tuple[dict, list[int]]:
        bands: dict = {}
        tiles = []
        for rank in range(world):
            plan = plan_rank(segments, data.windows, TILE, {}, rank, world)
            tiles.append(len(plan.indices))
            sink = lambda fid, k, rows, p, v: bands.setdefault((fid, k), (p.copy(), v.copy()))  # noqa: E731
            stitcher = BandStitcher({s.fragment_id: s for s in segments}, plan.bands, weights, sink)
            for batch in DataLoader(data.items(plan.indices), batch_size=3):
                stitcher.add(
                    list(batch["fragment"]),
                    batch["yx"].numpy(),
                    batch["prob"][:, 0].numpy(),
                    batch["valid"][:, 0].numpy(),
                )
            stitcher.finish()
            assert stitcher.open_bands == 0
        return bands, tiles

    one, _ = run(1)
    three, tiles = run(3)
    assert sorted(one) == sorted(three) == sorted((s.fragment_id, k) for s in segments for k in range(s.count))
    for key in one:
        assert np.array_equal(one[key][0], three[key][0]) and np.array_equal(one[key][1], three[key][1])
    assert min(tiles) > 0 and sum(tiles) < 1.5 * len(data.windows)  # balanced, few tiles computed twice


def test_a_band_is_dropped_as_soon_as_its_tiles_are_in() -> None:
    from modules.prediction.band_plan import SegmentBands, plan_rank
    from modules.prediction.band_stitching import BandStitcher

    data = Segments({"long": (400, 32)})
    segment = SegmentBands("long", (400, 32), 16)
    plan = plan_rank([segment], data.windows, TILE, {})
    finished: list[int] = []
    stitcher = BandStitcher(
        {"long": segment}, plan.bands, np.ones((TILE, TILE), np.float32), lambda f, k, *_: finished.append(k)
    )
    most = 0
    for batch in DataLoader(data.items(plan.indices), batch_size=4):
        stitcher.add(
            list(batch["fragment"]), batch["yx"].numpy(), batch["prob"][:, 0].numpy(), batch["valid"][:, 0].numpy()
        )
        most = max(most, stitcher.open_bands)
    stitcher.finish()
    assert finished == list(range(segment.count)) and most <= 3


def test_explicit_threshold_and_formats(tmp_path: Path) -> None:
    data = Segments({"a": (24, 24)})
    writer = InkPredictionWriter(
        output_dir=str(tmp_path), threshold=0.8, write_submission=False, formats=["png", "rle"]
    )
    _predict(StandIn(threshold=0.3), writer, data)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_mask.png", "a_prediction.png"]
    reference = data.stitched()["a"]
    expected = (reference["prob"] > 0.8) & reference["valid"]
    assert ((_png(tmp_path / "a_mask.png") > 0) != expected).mean() < 0.005
    assert InkPredictionWriter(formats=["png", "rle"], write_submission=False).formats == ["png"]
    for bad in ([], ["png", "png"], ["jpeg"]):
        with pytest.raises(ValueError, match="formats"):
            InkPredictionWriter(formats=bad)
    with pytest.raises(ValueError, match="formats"):
        InkPredictionWriter(formats=["rle"], write_submission=False)  # nothing left to write
    with pytest.raises(ValueError, match="threshold"):
        InkPredictionWriter(threshold=1.0)
    with pytest.raises(ValueError, match="band_pixels"):
        InkPredictionWriter(band_pixels=0)


def test_unwritable_output_dir_fails_before_prediction_and_writes_nothing(tmp_path: Path) -> None:
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    out = blocker / "predictions"  # tests run as root, so a read-only chmod would not stop writing
    module = StandIn()
    with pytest.raises(NotADirectoryError, match=str(out)):
        _predict(module, InkPredictionWriter(output_dir=str(out)), Segments({"a": (24, 24)}))
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
    writer = InkPredictionWriter(output_dir=str(tmp_path), band_pixels=16 * 24)
    with pytest.raises(OSError, match="disk full"):
        _predict(StandIn(), writer, Segments({"a": (64, 24)}))
    files = sorted(p.name for p in tmp_path.iterdir() if p.is_file())
    assert files == ["a_prediction.png"]  # no tiff, no mask, no temporary file; the bands stay for a rerun
    assert (tmp_path / "a_prediction.png").read_bytes() == old


def test_bad_inputs_are_clear_errors(tmp_path: Path) -> None:
    class NaNs(StandIn):
        def predict_step(self, batch: dict, batch_idx: int) -> dict:
            out = super().predict_step(batch, batch_idx)
            out["prob"] = out["prob"] * float("nan")
            return out

    with pytest.raises(ValueError, match="NaN.*'a'"):
        _predict(NaNs(), InkPredictionWriter(output_dir=str(tmp_path)), Segments({"a": (24, 24)}))
    with pytest.raises(ValueError, match="file name"):
        _predict(StandIn(), InkPredictionWriter(output_dir=str(tmp_path)), Segments({"x/y": (24, 24)}))

    class Tensors(StandIn):
        def predict_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
            return batch["prob"]

    with pytest.raises(TypeError, match="predict_step to return"):
        _predict(Tensors(), InkPredictionWriter(output_dir=str(tmp_path)), Segments({"a": (24, 24)}))

    class Bare(pl.LightningDataModule):
        def predict_dataloader(self) -> DataLoader:
            return DataLoader([1])

    with pytest.raises(TypeError, match="prediction_layout"):
        _predict(StandIn(), InkPredictionWriter(output_dir=str(tmp_path)), Bare())


def test_with_ink_module_on_a_fragment_folder(tmp_path: Path) -> None:
    """InkModule + InkDataModule: tile probabilities of the real model, stitched band-wise and written."""
    from datamodules.ink_datamodule import InkDataModule
    from datamodules.synthetic import make_fragment
    from modules.ink_module import InkModule
    from tests.test_ink_module import TINY

    make_fragment(tmp_path / "data" / "seg", height=90, width=60, depth=12, seed=3)
    data = InkDataModule(data_dir=str(tmp_path / "data"), tile_size=32, z_start=2, z_end=10, num_workers=0)
    torch.manual_seed(0)
    module = InkModule(**{**TINY, "num_slices": 8})
    writer = InkPredictionWriter(output_dir=str(tmp_path / "pred"), band_pixels=16 * 60, formats=["tiff", "png"])
    _predict(module, writer, data)
    grey = _png(tmp_path / "pred" / "seg_prediction.png")
    assert grey.shape == (90, 60)
    with tifffile.TiffFile(tmp_path / "pred" / "seg_prediction.tif") as tif:
        assert np.array_equal(tif.series[0].levels[0].asarray(), grey)
    # The untrained net predicts about the same everywhere: the mask PNG is then the papyrus mask (valid pixels).
    mask = _png(tmp_path / "pred" / "seg_mask.png") > 0
    papyrus = np.asarray(data.fragments("predict")[0].mask)
    above = grey > 128
    assert above.all() or not above.any()
    assert np.array_equal(mask, papyrus & above) and 0 < papyrus.mean() < 1
