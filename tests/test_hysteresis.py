"""Tests of hysteresis thresholding, whole-map (`hysteresis`) and banded (`hysteresis_bands`)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from datamodules.pseudo.hysteresis import Hysteresis, hysteresis, hysteresis_bands


def _reader(prob: np.ndarray, calls: list[tuple[int, int]] | None = None) -> Callable[[int, int], np.ndarray]:
    """A ``read_rows`` over an in-memory map that records its calls in ``calls`` when given."""

    def read_rows(start: int, stop: int) -> np.ndarray:
        if calls is not None:
            calls.append((start, stop))
        return prob[start:stop].copy()  # a copy, so the module cannot rely on views of the whole map

    return read_rows


def _banded(prob: np.ndarray, rule: Hysteresis, band_rows: int) -> np.ndarray:
    """The bands of `hysteresis_bands` stitched back into a whole map, checking they tile it top to bottom."""
    bands = list(hysteresis_bands(_reader(prob), prob.shape, rule, band_rows))
    assert [start for start, _, _ in bands] == list(range(0, prob.shape[0], band_rows))
    assert bands[-1][1] == prob.shape[0]
    for start, stop, keep in bands:
        assert keep.dtype == bool and keep.shape == (stop - start, prob.shape[1])
    return np.concatenate([keep for _, _, keep in bands])


def _crafted() -> np.ndarray:
    """A 12 x 12 map with four regions of 0.6 (one seeded and large, one unseeded, one seeded and small, and a
    seeded pair touching only diagonally)."""
    prob = np.full((12, 12), 0.1)
    prob[1:4, 1:5] = 0.6  # 12 pixels, seeded below
    prob[2, 2] = 0.9
    prob[1:4, 7:11] = 0.6  # 12 pixels, no seed
    prob[6, 1:3] = 0.6  # 2 pixels, seeded: too small for min_area 5
    prob[6, 1] = 0.9
    prob[8:10, 6:8] = 0.6  # 4 pixels, seeded ...
    prob[8, 6] = 0.9
    prob[10:12, 8:10] = 0.6  # ... and 4 pixels touching it only at the corner (9, 7) / (10, 8)
    return prob


def test_crafted_map() -> None:
    prob = _crafted()
    keep = hysteresis(prob, Hysteresis(high=0.8, low=0.5, min_area=5))
    expected = np.zeros_like(keep)
    expected[1:4, 1:5] = True  # the seed grew to its whole region
    expected[8:10, 6:8] = expected[10:12, 8:10] = True  # 4 + 4 diagonally joined pixels reach min_area 5
    np.testing.assert_array_equal(keep, expected)
    # Without min_area, the small seeded region is kept; the unseeded one never is.
    loose = hysteresis(prob, Hysteresis(high=0.8, low=0.5))
    assert loose[6, 1:3].all() and not loose[1:4, 7:11].any()
    # The diagonal pair is one component: 8 pixels, kept at min_area 8, dropped at 9.
    assert hysteresis(prob, Hysteresis(0.8, 0.5, min_area=8))[10:12, 8:10].all()
    assert not hysteresis(prob, Hysteresis(0.8, 0.5, min_area=9))[8:12, 6:10].any()
    for band_rows in (1, 2, 5, 12, 100):
        np.testing.assert_array_equal(_banded(prob, Hysteresis(0.8, 0.5, min_area=5), band_rows), keep)


def test_thresholds_are_inclusive() -> None:
    prob = np.array([[0.5, 0.8, 0.49, 0.5]])  # the last 0.5 touches no seed
    np.testing.assert_array_equal(hysteresis(prob, Hysteresis(high=0.8, low=0.5)), [[True, True, False, False]])
    np.testing.assert_array_equal(_banded(prob, Hysteresis(high=0.8, low=0.5), 1), [[True, True, False, False]])


@pytest.mark.parametrize("band_rows", [1, 2, 3])
def test_u_shape_joined_only_at_the_bottom_across_seams(band_rows: int) -> None:
    prob = np.zeros((10, 7))
    prob[0:9, 1] = 0.6  # left arm
    prob[0:9, 5] = 0.6  # right arm
    prob[9, 1:6] = 0.6  # the only join, at the very bottom
    prob[0, 5] = 0.9  # the only seed, at the top of the right arm
    rule = Hysteresis(high=0.8, low=0.5)
    reference = hysteresis(prob, rule)
    assert reference[0:9, 1].all() and reference[9, 1:6].all()
    banded = _banded(prob, rule, band_rows)
    assert banded[0, 1], "the unseeded arm's top, in the first band, is known to be kept only after the last band"
    np.testing.assert_array_equal(banded, reference)


def test_u_shape_joined_by_a_diagonal_step_at_a_seam() -> None:
    prob = np.zeros((6, 5))
    prob[0:3, 0] = 0.6
    prob[3:6, 1] = 0.6  # meets the column above only diagonally, across the seam between rows 2 and 3
    prob[5, 1:5] = 0.6
    prob[0:6, 4] = 0.6
    prob[0, 4] = 0.9
    rule = Hysteresis(high=0.8, low=0.5)
    assert hysteresis(prob, rule)[0, 0]
    for band_rows in (1, 2, 3):
        np.testing.assert_array_equal(_banded(prob, rule, band_rows), hysteresis(prob, rule))


@pytest.mark.parametrize(("min_area", "kept"), [(10, True), (11, False)])
def test_area_is_summed_across_bands(min_area: int, kept: bool) -> None:
    prob = np.zeros((12, 3))
    prob[1:11, 1] = 0.7  # a vertical line of 10 pixels over four bands of 3 rows
    prob[10, 1] = 0.95
    banded = _banded(prob, Hysteresis(high=0.9, low=0.5, min_area=min_area), band_rows=3)
    assert banded.sum() == (10 if kept else 0)
    assert banded[1:11, 1].all() == kept


@settings(max_examples=60, deadline=None)
@given(
    prob=hnp.arrays(
        np.float64,
        hnp.array_shapes(min_dims=2, max_dims=2, min_side=1, max_side=24),
        elements=st.sampled_from([0.0, 0.3, 0.5, 0.6, 0.8, 0.95, 1.0]),  # few values, so ties at thresholds occur
    ),
    band_rows=st.integers(1, 30),
    high=st.sampled_from([0.6, 0.8, 0.95, 1.0]),
    low_fraction=st.sampled_from([0.3, 0.5, 0.8, 1.0]),
    min_area=st.integers(0, 12),
)
def test_bands_equal_the_whole_map(
    prob: np.ndarray, band_rows: int, high: float, low_fraction: float, min_area: int
) -> None:
    rule = Hysteresis(high=high, low=high * low_fraction, min_area=min_area)
    np.testing.assert_array_equal(_banded(prob, rule, band_rows), hysteresis(prob, rule))


def test_read_rows_is_called_inside_the_map_at_most_twice_per_band() -> None:
    prob = np.random.default_rng(0).random((23, 9))
    calls: list[tuple[int, int]] = []
    bands = list(hysteresis_bands(_reader(prob, calls), prob.shape, Hysteresis(0.9, 0.4), band_rows=5))
    assert [(start, stop) for start, stop, _ in bands] == [(0, 5), (5, 10), (10, 15), (15, 20), (20, 23)]
    assert all(0 <= start < stop <= 23 for start, stop in calls)
    assert max(Counter(calls).values()) <= 2
    assert set(calls) == {(start, stop) for start, stop, _ in bands}


def test_arguments_are_checked_at_the_call() -> None:
    calls: list[tuple[int, int]] = []
    read_rows = _reader(np.zeros((4, 4)), calls)
    with pytest.raises(ValueError, match="band_rows"):
        hysteresis_bands(read_rows, (4, 4), Hysteresis(0.8, 0.5), band_rows=0)
    with pytest.raises(ValueError, match="shape"):
        hysteresis_bands(read_rows, (0, 4), Hysteresis(0.8, 0.5))
    with pytest.raises(ValueError, match="shape"):
        hysteresis_bands(read_rows, (4,), Hysteresis(0.8, 0.5))  # type: ignore[arg-type]
    assert calls == []


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"high": 0.5, "low": 0.6}, "low"),
        ({"high": 0.8, "low": 0.0}, "low"),
        ({"high": 1.2, "low": 0.5}, "high"),
        ({"high": 0.0, "low": 0.0}, "high"),
        ({"high": float("nan"), "low": 0.5}, "high"),
        ({"high": 0.8, "low": 0.5, "min_area": -1}, "min_area"),
        ({"high": 0.8, "low": 0.5, "min_area": 2.5}, "min_area"),
    ],
)
def test_bad_rule_is_rejected(kwargs: dict[str, float], field: str) -> None:
    with pytest.raises(ValueError, match=field):
        Hysteresis(**kwargs)


def test_bad_rows_are_rejected() -> None:
    rule = Hysteresis(0.8, 0.5)
    wrong_shape = lambda start, stop: np.zeros((stop - start, 3))  # noqa: E731
    with pytest.raises(ValueError, match=r"read_rows\(0, 2\).*\(2, 3\).*\(2, 4\)"):
        list(hysteresis_bands(wrong_shape, (4, 4), rule, band_rows=2))
    prob = np.zeros((4, 4))
    prob[3, 1] = np.nan
    with pytest.raises(ValueError, match=r"read_rows\(2, 4\).*NaN"):
        list(hysteresis_bands(_reader(prob), (4, 4), rule, band_rows=2))
    with pytest.raises(ValueError, match="NaN"):
        hysteresis(prob, rule)
    with pytest.raises(ValueError, match="float"):
        list(hysteresis_bands(_reader(np.zeros((4, 4), np.uint8)), (4, 4), rule))


def test_rows_that_change_between_passes_are_rejected() -> None:
    reads = Counter[tuple[int, int]]()
    prob = np.zeros((4, 4))
    prob[0, 0] = 0.9

    def drifting(start: int, stop: int) -> np.ndarray:
        reads[(start, stop)] += 1
        rows = prob[start:stop].copy()
        if reads[(start, stop)] == 2:
            rows[-1, -1] = 0.9  # a new component appears in pass 2
        return rows

    with pytest.raises(ValueError, match=r"read_rows\(0, 2\).*pass 2"):
        list(hysteresis_bands(drifting, (4, 4), Hysteresis(0.8, 0.5), band_rows=2))
