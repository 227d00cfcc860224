"""Kaggle run-length encoding (utils/rle.py): the documented format, round trips, errors, memory."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from utils.rle import RleEncoder, rle_decode, rle_encode


def _kaggle_reference(mask: np.ndarray) -> str:
    """The encoder published with the Vesuvius Challenge ink-detection competition."""
    pixels = mask.flatten()
    pixels = np.concatenate([[0], pixels, [0]])
    runs = np.where(pixels[1:] != pixels[:-1])[0] + 1
    runs[1::2] -= runs[::2]
    return " ".join(str(x) for x in runs)


masks = hnp.arrays(np.bool_, hnp.array_shapes(min_dims=2, max_dims=2, min_side=1, max_side=24))


def test_documented_example() -> None:
    assert rle_encode(np.array([[0, 1, 1], [0, 0, 1]], dtype=np.uint8)) == "2 2 6 1"
    assert rle_decode("2 2 6 1", (2, 3)).tolist() == [[False, True, True], [False, False, True]]


def test_empty_and_full_masks() -> None:
    assert rle_encode(np.zeros((3, 5), dtype=bool)) == ""
    assert rle_encode(np.ones((3, 5), dtype=bool)) == "1 15"
    assert not rle_decode("", (3, 5)).any()
    assert rle_decode("1 15", (3, 5)).all()


@settings(max_examples=150, deadline=None)
@given(mask=masks, chunk=st.integers(1, 40))
def test_matches_the_kaggle_encoder_and_round_trips(mask: np.ndarray, chunk: int) -> None:
    # Small chunks make runs cross chunk boundaries.
    rle = rle_encode(mask, chunk_pixels=chunk)
    assert rle == _kaggle_reference(mask.astype(np.uint8))
    decoded = rle_decode(rle, mask.shape)
    assert decoded.dtype == np.bool_ and np.array_equal(decoded, mask)


@settings(max_examples=50, deadline=None)
@given(mask=masks, cuts=st.lists(st.integers(0, 600), max_size=5))
def test_incremental_encoder_equals_one_shot(mask: np.ndarray, cuts: list[int]) -> None:
    flat = mask.reshape(-1)
    edges = sorted({0, flat.size, *(c for c in cuts if c < flat.size)})
    encoder = RleEncoder()
    for a, b in zip(edges[:-1], edges[1:]):
        encoder.update(flat[a:b])
    assert encoder.num_pixels == flat.size
    assert encoder.finish() == rle_encode(mask)


def test_numeric_zero_one_and_non_contiguous_inputs() -> None:
    rng = np.random.default_rng(0)
    mask = rng.random((7, 9)) < 0.4
    expected = _kaggle_reference(mask.astype(np.uint8))
    assert rle_encode(mask.astype(np.uint8)) == expected
    assert rle_encode(mask.astype(np.float32)) == expected
    # Row-major order of the values, not of the memory layout.
    assert rle_encode(np.asfortranarray(mask)) == expected
    assert rle_encode(mask.T.copy().T) == expected
    assert rle_encode(mask[:, ::2]) == _kaggle_reference(mask[:, ::2].astype(np.uint8))


@pytest.mark.parametrize(
    "bad, message",
    [
        (np.array([[0, 255]], dtype=np.uint8), "binary"),
        (np.array([[0.0, 0.5]]), "binary"),
        (np.array([[0.0, np.nan]]), "binary"),
        (np.array([[-1, 0]]), "binary"),
        (np.array([["a", "b"]]), "dtype"),
        (np.array(1), "scalar"),
    ],
)
def test_non_binary_input_is_rejected(bad: np.ndarray, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        rle_encode(bad)


def test_encoder_misuse_is_rejected() -> None:
    encoder = RleEncoder()
    encoder.update(np.array([1, 0], dtype=bool))
    assert encoder.finish() == "1 1"
    with pytest.raises(ValueError, match="after finish"):
        encoder.update(np.array([1], dtype=bool))
    with pytest.raises(ValueError, match="chunk_pixels"):
        rle_encode(np.zeros((2, 2), dtype=bool), chunk_pixels=0)


@pytest.mark.parametrize(
    "rle, message",
    [
        ("1 2 3", "odd"),
        ("1 x", "not an integer"),
        ("0 2", "1-based"),
        ("1 0", ">= 1"),
        ("1 3 2 1", "overlap"),
        ("5 1 1 1", "overlap"),
        ("6 2", "past the 6 pixels"),
    ],
)
def test_bad_rle_strings_are_rejected(rle: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        rle_decode(rle, (2, 3))


def test_decode_rejects_bad_arguments_and_accepts_touching_runs() -> None:
    with pytest.raises(ValueError, match="str"):
        rle_decode(b"1 1", (2, 3))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="shape"):
        rle_decode("1 1", (2, -3))
    # Touching runs are not canonical but unambiguous.
    assert rle_decode("1 2 3 1", (1, 4)).tolist() == [[True, True, True, False]]


def test_working_memory_stays_below_a_fraction_of_the_mask() -> None:
    mask = np.zeros((2000, 4000), dtype=bool)  # 8 MB
    mask[100:1900:7, 50:3900] = True
    tracemalloc.start()
    try:
        rle = rle_encode(mask, chunk_pixels=1 << 20)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert rle == _kaggle_reference(mask.astype(np.uint8))
    # One chunk's diff (1 MB) plus run boundaries and the text; no full-size copy of the mask.
    assert peak < mask.nbytes / 4, peak
