"""Scores count full-resolution pixels whatever `stitch_stride` is; stitching allocates only the evaluated box."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from datamodules.augment.transforms import AugmentConfig
from datamodules.ink_datamodule import InkDataModule
from modules.evaluation import score_stitched
from modules.evaluation.metrics import fragment_scores
from modules.evaluation.resample import full_resolution_bands
from modules.evaluation.stitching import FragmentStitcher
from tests.conftest import random_fragment_arrays, write_fragment

TILE, STEP = 32, 16


def _stitch(prob: np.ndarray, label: np.ndarray, stride: int, box: tuple[int, int, int, int] | None = None):
    """A reduced, finished stitcher fed exact crops of `prob` (an identity model) over the box, tiles every STEP."""
    h, w = prob.shape
    y0, x0, y1, x1 = box or (0, 0, h, w)
    corners = [(y, x) for y in range(y0, y1 - TILE + 1, STEP) for x in range(x0, x1 - TILE + 1, STEP)]
    st = FragmentStitcher({"a": (h, w)}, TILE, stride=stride, boxes={"a": box} if box else None)
    for i in range(0, len(corners), 8):
        part = corners[i : i + 8]

        def crop(a: np.ndarray, part: list[tuple[int, int]] = part) -> torch.Tensor:
            return torch.stack([torch.from_numpy(a[y : y + TILE, x : x + TILE].astype(np.float32)) for y, x in part])

        st.add(["a"] * len(part), torch.tensor(part), crop(prob)[:, None], torch.ones(len(part), 1, TILE, TILE),
               crop(label)[:, None])  # fmt: skip
    st.reduce()
    st.finish()
    return st


def _stripes(h: int, w: int, width: int) -> np.ndarray:
    """Vertical ink strokes of `width` px at offsets that are not on any stride grid, away from the map's edges."""
    label = np.zeros((h, w), dtype=np.float32)
    for x in range(9, w - width - 9, 2 * width + 7):
        label[:, x : x + width] = 1
    return label


@pytest.mark.parametrize(
    ("stride", "width", "perfect"), [(1, 3, True), (2, 3, True), (2, 5, True), (4, 9, True), (4, 3, False)]
)
def test_a_perfect_prediction_of_strokes_the_map_can_hold_scores_one(stride: int, width: int, perfect: bool) -> None:
    # Straight strokes: average pooling then bilinear upsampling gives back every edge at any offset.
    # (3-px strokes scored 0.83 at stride 2 when labels were pooled too.) A stroke thinner than about two
    # stored pixels cannot be held by the map: at stride 4, 3-px strokes are honestly imperfect.
    label = _stripes(96, 128, width)
    scores = score_stitched(_stitch(label, label, stride), "val", 0.5)
    if perfect:
        assert scores["val/f05"] == 1.0 and scores["val/f05_best"] == 1.0
    else:
        assert scores["val/f05"] < 1.0


def _smooth_case(h: int = 128, w: int = 160) -> tuple[np.ndarray, np.ndarray]:
    """Ink strokes and a trained-like prediction: the strokes blurred, shifted and slightly wrong, smooth."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:h, 0:w]
    label = np.zeros((h, w), dtype=bool)
    for _ in range(10):
        a, cy, cx = rng.uniform(0, np.pi), rng.uniform(0, h), rng.uniform(0, w)
        label |= np.abs((yy - cy) * np.cos(a) - (xx - cx) * np.sin(a)) < rng.uniform(3, 6)
    field = torch.from_numpy(label.astype(np.float32) + 0.3 * rng.standard_normal((h, w)).astype(np.float32))
    kernel = torch.exp(-0.5 * (torch.arange(-18, 19, dtype=torch.float32) / 6.0) ** 2)
    kernel = kernel / kernel.sum()
    blurred = F.conv2d(field[None, None], kernel.view(1, 1, 1, -1), padding=(0, 18))
    blurred = F.conv2d(blurred, kernel.view(1, 1, -1, 1), padding=(18, 0))[0, 0].numpy()
    prob = 1 / (1 + np.exp(-(blurred - 0.35) * 5))
    return prob.astype(np.float32), label.astype(np.float32)


def test_a_smooth_prediction_scores_the_same_at_stride_one_and_two() -> None:
    prob, label = _smooth_case()
    at = {s: score_stitched(_stitch(prob, label, s), "test", 0.5, 0.4) for s in (1, 2)}
    for name in ("test/f05", "test/f05_val_threshold", "test/f05_oracle", "test/ap"):
        assert abs(at[1][name] - at[2][name]) <= 0.005, (name, at[1][name], at[2][name])
    # The pixels counted are the full-resolution ones, so the stride does not change the scored area.
    assert 0.3 < at[1]["test/f05"] < 0.99


@pytest.mark.parametrize("stride", [2, 4])
def test_scores_are_those_of_the_stored_map_upsampled_to_full_resolution(stride: int) -> None:
    prob, label = _smooth_case()
    st = _stitch(prob, label, stride)
    scores = score_stitched(st, "val", 0.5)
    res = st.result("a")
    # The stored map upsampled band by band, scored against full-resolution labels inside the mask.
    full = np.concatenate([p for p, _ in full_resolution_bands(res["prob"], res["valid"], label.shape, 1000)])
    expected = fragment_scores(full, label, np.ones(label.shape, dtype=bool), 0.5)
    assert scores == {f"val/{k}": v for k, v in expected.items()}


def test_only_the_box_is_allocated_and_scores_do_not_change() -> None:
    prob, label = _smooth_case(160, 128)
    box = (64, 0, 128, 128)  # a region split's held-out band
    whole, boxed = _stitch(prob, label, 2), _stitch(prob, label, 2, box)
    assert boxed.box("a") == box and boxed.stored_shape("a") == (32, 64)
    assert tuple(boxed._flags["a"].shape) == (64, 128) and tuple(boxed._prob["a"].shape) == (32, 64)
    res = boxed.result("a", prob_dtype=np.float16, release=True)
    assert res["prob"].dtype == np.float16 and res["box"] == box and res["prob"].shape == (32, 64)
    assert "a" not in boxed._flags and "a" not in boxed._prob  # released
    # Same tiles, scored in the band only: a whole-fragment stitcher fed the same tiles agrees on the band's pixels.
    st = _stitch(prob[64:128], label[64:128], 2)
    assert score_stitched(_stitch(prob, label, 2, box), "val", 0.5) == score_stitched(st, "val", 0.5)
    assert whole.stored_shape("a") == (80, 64)
    with pytest.raises(ValueError, match="must lie inside its shape"):
        FragmentStitcher({"a": (10, 10)}, 8, boxes={"a": (0, 0, 11, 10)})
    with pytest.raises(ValueError, match="evaluated box"):
        boxed.reset()
        boxed.add(["a"], torch.tensor([[0, 0]]), torch.rand(1, 1, TILE, TILE), torch.ones(1, 1, TILE, TILE))


def test_the_data_module_gives_the_box_of_a_region_split_band(tmp_path: Path) -> None:
    volume, mask, labels = random_fragment_arrays((10, 96, 80), 0)
    write_fragment(tmp_path / "data" / "a", volume, mask=mask, labels=labels)
    dm = InkDataModule(
        data_dir=str(tmp_path / "data"), z_start=2, z_end=8, tile_size=16, stride=8, eval_stride=8, batch_size=4,
        num_workers=0, samples_per_epoch=32, augment=AugmentConfig(enabled=False), folds=4,
        train_fragments=["a"], val_fragments=["a"],
    )  # fmt: skip
    dm.setup("fit")
    (y0, x0, y1, x1) = dm.fragment_boxes("validate")["a"]
    windows = dm.tiles("val").windows
    assert (y0, x0) == (windows[:, 1].min(), windows[:, 2].min())
    assert (y1, x1) == (min(96, windows[:, 1].max() + 16), min(80, windows[:, 2].max() + 16))
    assert (y1 - y0) * (x1 - x0) < 96 * 80 / 2  # one band of four, not the whole fragment
