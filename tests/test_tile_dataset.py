"""TileDataset (datamodules/tile_dataset.py): the slices a tile reads, and the depth shift staying centred."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from datamodules.augment.transforms import AugmentConfig, TileTransform
from datamodules.reading.fragment import Fragment
from datamodules.tile_dataset import TileDataset
from datamodules.tiling import TileSet
from tests.conftest import write_fragment
from tests.test_transforms import NONE

DEPTH, SIZE = 10, 16


def _slice_numbered_fragment(tmp_path, z_start: int, z_end: int) -> Fragment:
    """Slice k holds the constant (k + 1) * 1000, so a tile's first channel names the slice it came from."""
    volume = np.stack([np.full((SIZE, SIZE), (k + 1) * 1000, np.uint16) for k in range(DEPTH)])
    folder = write_fragment(tmp_path / "frag", volume, mask=np.ones((SIZE, SIZE), bool))
    return Fragment(folder, z_start=z_start, z_end=z_end)


def _first_slices(fragment: Fragment, depth_shift: int, draws: int) -> list[int]:
    config = AugmentConfig(**{**NONE, "depth_shift": depth_shift})
    num_slices = fragment.z_end - fragment.z_start
    tiles = TileSet(np.array([[0, 0, 0]]), np.array([[0, 0, 0, 0]]), np.array([True]))
    dataset = TileDataset(
        [fragment], tiles, SIZE, TileTransform(config, num_slices, train=True), depth_margin=depth_shift
    )
    torch.manual_seed(0)
    firsts = []
    for _ in range(draws):
        value = float(dataset[0]["image"][0, 0, 0]) * 65535  # normalised by the dtype range
        firsts.append(int(round(value / 1000)) - 1)
    return firsts


@pytest.mark.parametrize(
    ("z_start", "z_end", "shifts"),
    [
        (0, 4, {0}),  # at the bottom of the volume: no room below, so no shift either way
        (1, 5, {-1, 0, 1}),  # one slice of room below: shifts of at most one slice, both ways
        (6, 10, {0}),  # at the top
        (5, 9, {-1, 0, 1}),
        (3, 7, {-2, -1, 0, 1, 2}),  # room on both sides: the full ±depth_shift
    ],
)
def test_the_depth_shift_is_symmetric_around_the_nominal_window(tmp_path, z_start, z_end, shifts) -> None:
    fragment = _slice_numbered_fragment(tmp_path, z_start, z_end)
    seen = [first - z_start for first in _first_slices(fragment, depth_shift=2, draws=200)]
    assert set(seen) == shifts
    assert abs(np.mean(seen)) < 0.25  # centred: the mean shift is about zero, not ±1 slice


def test_evaluation_reads_exactly_the_nominal_window(tmp_path) -> None:
    fragment = _slice_numbered_fragment(tmp_path, 0, 4)
    tiles = TileSet(np.array([[0, 0, 0]]), np.array([[0, 0, 0, 0]]), np.array([True]))
    item = TileDataset([fragment], tiles, SIZE, TileTransform(None, 4, train=False))[0]
    firsts = np.rint(item["image"][:, 0, 0].numpy() * 65535 / 1000).astype(int) - 1
    assert firsts.tolist() == [0, 1, 2, 3]
