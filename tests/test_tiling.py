"""Tiles and splits: held-out tiles never share a pixel with training tiles; eval tiles cover the mask."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from datamodules.tiling import (
    TileSet,
    band_edges,
    free_intervals,
    grid_positions,
    jitter_windows,
    plan_regions,
    region_tiles,
    window_sums,
)


def _plan(ids, shapes, tile, **overrides):
    settings_ = dict(
        train_fragments=None, val_fragments=None, test_fragments=None, folds=5, val_fold=0, test_fold=None, gap=tile
    )
    settings_.update(overrides)
    return plan_regions(ids, shapes, tile_size=tile, **settings_)


def _tiles(plans, stage, masks, labels=None, *, tile, stride, min_valid=0.0):
    parts = [
        region_tiles(
            r,
            masks[r.fragment],
            None if labels is None else labels[r.fragment],
            tile_size=tile,
            stride=stride,
            min_valid_fraction=min_valid,
        )
        for r in plans[stage]
    ]
    return TileSet.concat(parts)


def _footprint(tiles: TileSet, shape, tile, fragment=0, windows=None) -> np.ndarray:
    covered = np.zeros(shape, dtype=np.int32)
    windows = tiles.windows[:, 1:] if windows is None else windows
    for (f, _, _), (y, x) in zip(tiles.windows, windows):
        if f == fragment:
            covered[y : y + tile, x : x + tile] += 1
    return covered


def test_grid_positions_cover_the_length_and_end_flush():
    assert grid_positions(0, 100, 32, 16).tolist() == [0, 16, 32, 48, 64, 68]
    assert grid_positions(10, 42, 32, 16).tolist() == [10]
    assert len(grid_positions(0, 31, 32, 16)) == 0


def test_window_sums_match_brute_force():
    rng = np.random.default_rng(0)
    mask = rng.random((50, 70)) < 0.3
    ys, xs = grid_positions(0, 50, 16, 7), grid_positions(0, 70, 16, 9)
    sums = window_sums(mask, ys, xs, 16)
    expected = np.array([[mask[y : y + 16, x : x + 16].sum() for x in xs] for y in ys])
    np.testing.assert_array_equal(sums, expected)


def test_free_intervals():
    assert free_intervals(100, [(20, 40), (30, 60)]) == ((0, 20), (60, 100))
    assert free_intervals(100, [(-5, 10), (90, 130)]) == ((10, 90),)


@settings(max_examples=60, deadline=None)
@given(
    height=st.integers(64, 260),
    width=st.integers(64, 260),
    tile=st.sampled_from([8, 16, 24, 32]),
    stride_div=st.sampled_from([1, 2, 4]),
    folds=st.integers(2, 6),
    data=st.data(),
)
def test_no_pixel_of_a_held_out_tile_is_in_a_training_tile(height, width, tile, stride_div, folds, data):
    length = max(height, width)
    if min(np.diff(band_edges(length, folds))) < tile:
        folds = 2
        if length // 2 < tile:
            return
    val_fold = data.draw(st.integers(0, folds - 1))
    test_fold = data.draw(st.one_of(st.none(), st.integers(0, folds - 1).filter(lambda f: f != val_fold)))
    gap = data.draw(st.sampled_from([0, tile]))
    plans = _plan(["a"], [(height, width)], tile, folds=folds, val_fold=val_fold, test_fold=test_fold, gap=gap)
    mask = np.ones((height, width), dtype=bool)
    stride = max(1, tile // stride_div)
    train = _tiles(plans, "train", [mask], tile=tile, stride=stride, min_valid=0.5)
    held = np.zeros((height, width), dtype=bool)
    for stage in ("val", "test"):
        tiles = _tiles(plans, stage, [mask], tile=tile, stride=stride)
        covered = _footprint(tiles, (height, width), tile) > 0
        if plans[stage]:
            # held-out tiles cover their whole band
            band = plans[stage][0].intervals[0]
            axis = plans[stage][0].axis
            sl = np.s_[band[0] : band[1], :] if axis == 0 else np.s_[:, band[0] : band[1]]
            assert covered[sl].all()
        held |= covered
    # jittered training windows too
    rng = np.random.default_rng(0)
    if len(train):
        moved = jitter_windows(train, np.arange(len(train)), stride, rng)
        for windows in (None, moved):
            trained = _footprint(train, (height, width), tile, windows=windows) > 0
            assert not (trained & held).any()
            if gap:
                # and keep `gap` px away from every held-out pixel along the split axis
                axis = plans["train"][0].axis
                rows = np.nonzero(held.any(axis=1 - axis))[0]
                cols = np.nonzero(trained.any(axis=1 - axis))[0]
                assert np.min(np.abs(rows[:, None] - cols[None, :])) > gap


def test_fragment_lists_split_by_fragment_and_mixed():
    shapes = [(100, 80), (120, 120), (90, 90)]
    plans = _plan(["a", "b", "c"], shapes, 16, val_fragments=["b"], test_fragments=["c"])
    assert [r.fragment for r in plans["train"]] == [0]
    assert [r.fragment for r in plans["val"]] == [1] and plans["val"][0].intervals == ((0, 120),)
    assert [r.fragment for r in plans["test"]] == [2]

    # the winners' scheme: fragment b also trains, so it is cut by region
    plans = _plan(["a", "b", "c"], shapes, 16, train_fragments=["a", "b"], val_fragments=["b"], val_fold=2)
    assert [r.fragment for r in plans["train"]] == [0, 1]
    assert plans["val"][0].intervals == ((48, 72),)
    assert plans["train"][1].intervals == ((0, 32), (88, 120))
    assert plans["test"] == []


def test_default_without_lists_is_a_region_split_of_every_fragment():
    plans = _plan(["only"], [(200, 100)], 16, test_fold=4)
    assert plans["val"][0].intervals == ((0, 40),) and plans["val"][0].axis == 0
    assert plans["test"][0].intervals == ((160, 200),)
    assert plans["train"][0].intervals == ((56, 144),)


def test_split_setting_errors():
    with pytest.raises(ValueError, match=r"val_fragments names unknown fragment\(s\) \['zz'\]"):
        _plan(["a"], [(100, 100)], 16, val_fragments=["zz"])
    with pytest.raises(ValueError, match=r"val_fold=7 is outside 0..4"):
        _plan(["a"], [(100, 100)], 16, val_fold=7)
    with pytest.raises(ValueError, match="test_fold=0 equals val_fold"):
        _plan(["a"], [(100, 100)], 16, test_fold=0)
    with pytest.raises(ValueError, match=r"band 0 of folds=5 is 20 px .*thinner than tile_size=32"):
        _plan(["a"], [(100, 100)], 32)
    with pytest.raises(ValueError, match="folds=1"):
        _plan(["a"], [(100, 100)], 16, folds=1)


def test_min_valid_fraction_and_ink_flags():
    mask = np.zeros((64, 64), dtype=bool)
    mask[:, :40] = True
    labels = np.zeros_like(mask)
    labels[5, 5] = True
    plans = _plan(["a"], [(64, 64)], 16, val_fragments=[], train_fragments=["a"])
    strict = _tiles(plans, "train", [mask], [labels], tile=16, stride=16, min_valid=1.0)
    loose = _tiles(plans, "train", [mask], [labels], tile=16, stride=16, min_valid=0.0)
    assert len(strict) == 4 * 2 and len(loose) == 4 * 3
    assert strict.has_ink.sum() == 1 and tuple(strict.windows[strict.has_ink][0, 1:]) == (0, 0)


def test_eval_tiles_cover_every_mask_pixel():
    rng = np.random.default_rng(3)
    mask = np.zeros((97, 83), dtype=bool)
    mask[10:90, 5:70] = rng.random((80, 65)) < 0.9
    plans = _plan(["a"], [(97, 83)], 32, val_fragments=["a"])
    tiles = _tiles(plans, "val", [mask], tile=32, stride=8)
    covered = _footprint(tiles, mask.shape, 32) > 0
    assert covered[mask].all()
