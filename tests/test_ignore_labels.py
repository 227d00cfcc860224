"""Loose labels: ignore.png and, when set, an "unknown" label level take pixels out of the loss and the metric."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from datamodules.augment.transforms import TileTransform
from datamodules.reading.fragment import Fragment
from datamodules.reading.label_rules import LabelConfig
from datamodules.tile_dataset import TileDataset
from datamodules.tiling import TileSet
from tests.conftest import write_fragment

UNKNOWN_127 = LabelConfig(unknown=127)


def _labelled(tmp_path, labels: np.ndarray, ignore: np.ndarray | None = None):
    volume = np.random.default_rng(0).integers(0, 60000, size=(6, 32, 32), dtype=np.uint16)
    folder = write_fragment(tmp_path / "frag", volume, mask=np.ones((32, 32), bool))
    Image.fromarray(labels.astype(np.uint8)).save(folder / "inklabels.png")
    if ignore is not None:
        Image.fromarray(ignore.astype(np.uint8) * 255).save(folder / "ignore.png")
    return folder


def _item(fragment: Fragment) -> dict:
    tiles = TileSet(np.array([[0, 0, 0]]), np.array([[0, 0, 0, 0]]), np.array([True]))
    dataset = TileDataset([fragment], tiles, 32, TileTransform(None, 6, train=False))
    return dataset[0]


def test_an_unknown_level_when_set_is_not_scored(tmp_path):
    labels = np.zeros((32, 32), np.uint8)
    labels[4:10, 4:10] = 255
    labels[20:24, 20:24] = 127
    fragment = Fragment(_labelled(tmp_path, labels), z_start=0, z_end=6, labels=UNKNOWN_127)
    assert fragment.labels[5, 5] and not fragment.labels[21, 21]
    item = _item(fragment)
    valid = item["valid"][0].numpy()
    assert valid[21, 21] == 0 and valid[5, 5] == 1 and valid.sum() == 32 * 32 - 16


def test_by_default_127_is_an_anti_aliased_grey_level_not_unknown(tmp_path):
    labels = np.zeros((32, 32), np.uint8)
    labels[20:24, 20:24] = 127
    labels[4:10, 4:10] = 128
    fragment = Fragment(_labelled(tmp_path, labels), z_start=0, z_end=6)
    assert fragment.ignore is None and not fragment.labels[21, 21] and fragment.labels[5, 5]
    assert _item(fragment)["valid"].sum() == 32 * 32


def test_ignore_png_joins_the_unknown_labels(tmp_path):
    labels = np.zeros((32, 32), np.uint8)
    labels[20:24, 20:24] = 127
    ignore = np.zeros((32, 32), bool)
    ignore[0:2, :] = True
    fragment = Fragment(_labelled(tmp_path, labels, ignore), z_start=0, z_end=6, labels=UNKNOWN_127)
    assert fragment.ignore is not None and int(fragment.ignore.sum()) == 16 + 64
    assert _item(fragment)["valid"].sum() == 32 * 32 - 80


def test_plain_binary_labels_have_no_ignore_map(tmp_path):
    labels = np.zeros((32, 32), np.uint8)
    labels[4:10, 4:10] = 255
    fragment = Fragment(_labelled(tmp_path, labels), z_start=0, z_end=6, labels=UNKNOWN_127)
    assert fragment.ignore is None
    assert _item(fragment)["valid"].sum() == 32 * 32


def test_a_grey_ignore_map_is_rejected_naming_it(tmp_path):
    labels = np.zeros((32, 32), np.uint8)
    labels[4:10, 4:10] = 200  # grey labels are fine: ink at >= 50 %
    fragment = Fragment(_labelled(tmp_path, labels), z_start=0, z_end=6, labels=UNKNOWN_127)
    assert int(fragment.labels.sum()) == 36
    ignore_bad = np.zeros((32, 32), np.uint8)
    ignore_bad[0, 0] = 3
    folder = tmp_path / "frag"
    Image.fromarray(ignore_bad).save(folder / "ignore.png")
    with pytest.raises(ValueError, match="ignore mask.*ignore.png.*not binary"):
        Fragment(folder, z_start=0, z_end=6)
