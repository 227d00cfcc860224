"""InkDataModule: batches as DESIGN.md gives them, splits, workers, predict without labels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from datamodules.augment.transforms import AugmentConfig
from datamodules.ink_datamodule import InkDataModule
from tests.conftest import random_fragment_arrays, write_fragment

NO_AUGMENT = AugmentConfig(enabled=False)


FRAGMENTS = {"a": ((10, 96, 80), 0), "b": ((10, 64, 72), 1)}


def _arrays(name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Known pixels of fragment 'a' (96x80) or 'b' (64x72), 10 slices; ink only in the left half."""
    volume, mask, labels = random_fragment_arrays(*FRAGMENTS[name])
    labels[:, labels.shape[1] // 2 :] = False
    return volume, mask, labels


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    for name in FRAGMENTS:
        volume, mask, labels = _arrays(name)
        write_fragment(tmp_path / "data" / name, volume, mask=mask, labels=labels)
    return tmp_path / "data"


def _dm(data_dir: Path, **overrides) -> InkDataModule:
    settings = dict(
        data_dir=str(data_dir),
        z_start=2,
        z_end=8,
        tile_size=16,
        stride=8,
        eval_stride=8,
        batch_size=4,
        num_workers=0,
        samples_per_epoch=32,
        augment=NO_AUGMENT,
        folds=4,
    )
    settings.update(overrides)
    return InkDataModule(**settings)


@pytest.mark.parametrize("normalization", ["fragment", "dtype"])
def test_batches_have_the_documented_keys_shapes_and_values(data_dir, normalization):
    dm = _dm(data_dir, normalization=normalization)
    assert dm.num_slices == 6
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (4, 6, 16, 16) and batch["image"].dtype == torch.float32
    assert batch["label"].shape == (4, 1, 16, 16) and batch["valid"].shape == (4, 1, 16, 16)
    assert batch["yx"].shape == (4, 2) and batch["yx"].dtype == torch.int64
    assert len(batch["fragment"]) == 4 and set(batch["fragment"]) <= {"a", "b"}
    # the image is the normalised source window, label and valid the PNGs' window
    for i in range(4):
        name, (y, x) = batch["fragment"][i], batch["yx"][i].tolist()
        volume, mask, labels = _arrays(name)
        window = volume[2:8, y : y + 16, x : x + 16].astype(np.float32)
        if normalization == "dtype":
            expected = window / 65535
        else:  # the fragment's robust percentiles inside the mask map to 0 and 1
            lo, hi = next(f for f in dm.fragments("train") if f.id == name).intensity
            inside = volume[2:8][:, mask]
            assert lo == pytest.approx(np.percentile(inside, 0.5), rel=0.02)
            assert hi == pytest.approx(np.percentile(inside, 99.5), rel=0.02)
            expected = np.clip((window - lo) / (hi - lo), 0, 1)
        np.testing.assert_allclose(batch["image"][i].numpy(), expected, rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(batch["label"][i, 0].numpy(), labels[y : y + 16, x : x + 16])
        np.testing.assert_array_equal(batch["valid"][i, 0].numpy(), mask[y : y + 16, x : x + 16])


def test_default_strides_are_half_and_quarter_tile(data_dir):
    dm = _dm(data_dir, stride=None, eval_stride=None)
    assert (dm.stride, dm.eval_stride) == (8, 4)
    dm.setup("fit")
    for split, step in (("train", 8), ("val", 4)):
        ys = np.unique(dm.tiles(split).windows[dm.tiles(split).windows[:, 0] == 0, 1])
        assert np.diff(ys).max() == step


def test_region_split_keeps_val_and_test_apart_from_training(data_dir):
    dm = _dm(data_dir, test_fold=3)
    dm.setup("fit")
    train, val, test = dm.tiles("train"), dm.tiles("val"), dm.tiles("test")
    for fragment_index, fragment in enumerate(dm.fragments("train")):
        seen = {}
        for split, tiles in (("train", train), ("val", val), ("test", test)):
            cover = np.zeros((fragment.height, fragment.width), bool)
            for f, y, x in tiles.windows:
                if f == fragment_index:
                    cover[y : y + 16, x : x + 16] = True
            seen[split] = cover
        # training windows may move by up to stride/2: grow their footprint by that much
        grown = np.zeros_like(seen["train"])
        ys, xs = np.nonzero(seen["train"])
        for d in (-4, 0, 4):
            grown[np.clip(ys + d, 0, fragment.height - 1), xs] = True
            grown[ys, np.clip(xs + d, 0, fragment.width - 1)] = True
        assert not (grown & (seen["val"] | seen["test"])).any()
        assert seen["val"][fragment.mask & _band(fragment, 0)].all()
    assert set(dm.fragment_shapes("validate")) == {"a", "b"}
    assert dm.fragment_shapes("test")["a"] == (96, 80)


def _band(fragment, fold: int, folds: int = 4) -> np.ndarray:
    """The fold's band along the fragment's longer axis."""
    rows = fragment.height >= fragment.width
    edges = np.round(np.linspace(0, fragment.height if rows else fragment.width, folds + 1)).astype(int)
    band = np.zeros((fragment.height, fragment.width), bool)
    band[
        (slice(edges[fold], edges[fold + 1]), slice(None))
        if rows
        else (slice(None), slice(edges[fold], edges[fold + 1]))
    ] = True
    return band


def test_fragment_split_and_test_falls_back_to_val_with_a_warning(data_dir):
    dm = _dm(data_dir, train_fragments=["a"], val_fragments=["b"])
    dm.setup("fit")
    assert set(dm.tiles("train").windows[:, 0]) == {0}
    assert set(dm.fragment_shapes("validate")) == {"b"}
    with pytest.warns(UserWarning, match="no test split"):
        assert set(dm.fragment_shapes("test")) == {"b"}


def test_worker_round_trip_equals_single_process(data_dir):
    dm = _dm(data_dir, num_workers=2)
    dm.setup("fit")
    with_workers = list(dm.val_dataloader())
    dm0 = _dm(data_dir, num_workers=0)
    dm0.setup("fit")
    without = list(dm0.val_dataloader())
    assert len(with_workers) == len(without) > 1
    for a, b in zip(with_workers, without):
        assert torch.equal(a["image"], b["image"]) and torch.equal(a["yx"], b["yx"])


def test_training_batches_with_augmentation_and_workers(data_dir):
    dm = _dm(data_dir, num_workers=2, augment=AugmentConfig(), samples_per_epoch=16)
    dm.setup("fit")
    batches = list(dm.train_dataloader())
    assert len(batches) == 4
    assert all(b["image"].shape == (4, 6, 16, 16) and torch.isfinite(b["image"]).all() for b in batches)


def test_predict_needs_no_labels(data_dir, tmp_path):
    volume, mask, _ = random_fragment_arrays((10, 40, 40), 5)
    write_fragment(tmp_path / "unlabelled" / "p", volume, mask=mask)
    dm = _dm(data_dir, predict_dir=str(tmp_path / "unlabelled"))
    dm.setup("predict")
    batch = next(iter(dm.predict_dataloader()))
    assert "label" not in batch and batch["image"].shape[1:] == (6, 16, 16)
    assert dm.fragment_shapes("predict") == {"p": (40, 40)}


# ------------------------------------------------------------------------------------------ bad input


def test_empty_training_split_names_the_settings(data_dir):
    dm = _dm(data_dir, min_valid_fraction=1.0, tile_size=32, stride=32, folds=2)
    Image.fromarray(np.zeros((96, 80), np.uint8)).save(data_dir / "a" / "mask.png")
    Image.fromarray(np.zeros((64, 72), np.uint8)).save(data_dir / "b" / "mask.png")
    dm.setup("fit")
    with pytest.raises(ValueError, match=r"training split is empty .*min_valid_fraction=1.0"):
        dm.train_dataloader()


def test_fragment_smaller_than_a_tile(data_dir):
    with pytest.raises(ValueError, match=r"fragment 'b' is 64x72, smaller than one tile \(tile_size=70\)"):
        _dm(data_dir, tile_size=70).setup("fit")


def test_training_fragment_without_labels(data_dir):
    (data_dir / "b" / "inklabels.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"fragment 'b' is in the train split but has no inklabels.png"):
        _dm(data_dir).setup("fit")


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ({"z_start": 5, "z_end": 5}, "z_start=5, z_end=5"),
        ({"ink_ratio": 1.0}, r"ink_ratio=1.0"),
        ({"tile_size": 0}, "tile_size=0"),
        ({"min_valid_fraction": 1.5}, "min_valid_fraction=1.5"),
        ({"num_workers": -1}, "num_workers=-1"),
    ],
)
def test_bad_settings(data_dir, setting, message):
    with pytest.raises(ValueError, match=message):
        _dm(data_dir, **setting)


def test_z_end_beyond_the_volume(data_dir):
    with pytest.raises(ValueError, match=r"z_end=11 is beyond the last slice of fragment 'a' \(10 slices"):
        _dm(data_dir, z_end=11).setup("fit")


def test_unknown_fragment_names(data_dir):
    with pytest.raises(ValueError, match=r"val_fragments names unknown fragment\(s\) \['c'\]"):
        _dm(data_dir, val_fragments=["c"]).setup("fit")
    with pytest.raises(ValueError, match=r"reverse_depth names unknown fragment\(s\) \['c'\]"):
        _dm(data_dir, reverse_depth=["c"]).setup("fit")
