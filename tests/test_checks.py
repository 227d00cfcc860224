"""utils/checks.py: the shared argument checks accept what they should and name the setting when they refuse."""

from __future__ import annotations

import math

import numpy as np
import pytest

from utils.checks import check_filename_part, check_int, check_non_negative, check_range, check_threshold


def test_check_int_refuses_bools_floats_and_small_values() -> None:
    assert check_int("n", 3, minimum=1) == 3 and check_int("n", -5) == -5
    for bad in (True, 2.0, "2", None):
        with pytest.raises(ValueError, match=r"n=.*must be an integer"):
            check_int("n", bad)
    with pytest.raises(ValueError, match=r"GradCAMCallback every_n_epochs=0: must be an integer >= 1"):
        check_int("GradCAMCallback every_n_epochs", 0, minimum=1)


def test_check_int_takes_numpy_integers_only_when_asked() -> None:
    with pytest.raises(ValueError, match="seed"):
        check_int("seed", np.int64(4))
    value = check_int("seed", np.int64(4), minimum=0, allow_numpy=True)
    assert value == 4 and type(value) is int
    with pytest.raises(ValueError, match=">= 0"):
        check_int("seed", np.int64(-1), minimum=0, allow_numpy=True)


@pytest.mark.parametrize(
    ("kwargs", "good", "bad", "message"),
    [
        ({"low": 0.0, "high": 1.0}, [0.0, 1.0], [-0.1, 1.1], r"in \[0, 1\]"),
        ({"low": 0.0, "high": 1.0, "high_open": True}, [0.0, 0.5], [1.0], r"in \[0, 1\)"),
        ({"low": 0.0}, [0.0, 1e9], [-1e-9], ">= 0"),
        ({"low": 0.0, "low_open": True}, [1e-9], [0.0], "> 0"),
        ({"high": 0.9}, [0.9, -3.0], [0.91], "<= 0.9"),
    ],
)
def test_check_range_bounds(kwargs: dict, good: list[float], bad: list[float], message: str) -> None:
    for value in good:
        assert check_range("x", value, **kwargs) == value
    for value in [*bad, math.nan]:
        with pytest.raises(ValueError, match=f"x must be {message}, got"):
            check_range("x", value, **kwargs)


def test_check_non_negative_and_check_threshold() -> None:
    assert check_non_negative("weight_decay", 0.0) == 0.0
    with pytest.raises(ValueError, match="weight_decay must be >= 0, got -1"):
        check_non_negative("weight_decay", -1)
    assert check_threshold("threshold", 0.3) == 0.3
    for bad in (0.0, 1.0, math.nan):
        with pytest.raises(ValueError, match=r"threshold must be in \(0, 1\)"):
            check_threshold("threshold", bad)


def test_check_filename_part() -> None:
    assert check_filename_part("frag_1", "fragment id") == "frag_1"
    for bad in ("", ".", "..", "a/b", "a\\b", "a\0b", 3):
        with pytest.raises(ValueError, match="fragment id"):
            check_filename_part(bad, "fragment id")
