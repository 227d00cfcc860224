"""Run-length encoding of binary masks, as the Kaggle Vesuvius Challenge ink-detection submissions use it.

The mask is flattened in row-major (C) order and padded with a 0 at both ends; each run of 1s is written
as ``"start length"`` with 1-based ``start``, all pairs separated by single spaces. An empty mask encodes
as ``""``. Example: ``[[0, 1, 1], [0, 0, 1]]`` → ``"2 2 6 1"``.

Memory: `RleEncoder` works on chunks of at most ``chunk_pixels`` pixels (default 2**24). Per chunk the
peak is about 2 bytes per pixel (an int8 view and its ``np.diff``) plus 8 bytes per run boundary inside
the chunk; across the whole mask it keeps 8 bytes per run boundary and builds the output text in pieces
of 2**16 numbers. A 14830 × 9506 bool mask (141 MB) is thus encoded with about 34 MB of working memory
plus 16 bytes per run and the result string; no full-size int64 (or even int8) copy of the image is made.
`rle_decode` allocates the bool result plus one int8 array of the same size.
"""

from __future__ import annotations

import math

import numpy as np

DEFAULT_CHUNK_PIXELS = 1 << 24
_FORMAT_CHUNK = 1 << 16


def _as_bool_chunk(chunk: np.ndarray, what: str) -> np.ndarray:
    """A contiguous 1-D bool view/copy of ``chunk``; raises if it holds anything but 0 and 1."""
    if chunk.dtype == np.bool_:
        return np.ascontiguousarray(chunk).reshape(-1)
    if not (np.issubdtype(chunk.dtype, np.integer) or np.issubdtype(chunk.dtype, np.floating)):
        raise ValueError(f"{what} must be a bool or numeric array of 0/1 values, got dtype {chunk.dtype}")
    ones = chunk == 1
    if not np.all(ones | (chunk == 0)):
        bad = chunk[~(ones | (chunk == 0))]
        raise ValueError(
            f"{what} must be binary (only 0 and 1), found value {bad.flat[0]!r}; threshold it first "
            "(e.g. mask > 127 for a 0/255 image)"
        )
    return np.ascontiguousarray(ones).reshape(-1)


class RleEncoder:
    """Incremental Kaggle run-length encoder: feed a mask in row-major pieces, then call `finish`.

    Lets a writer encode a full-resolution mask band by band without ever holding all of it.

    Example:
        >>> enc = RleEncoder()
        >>> enc.update(np.array([0, 1, 1], dtype=bool)); enc.update(np.array([0, 0, 1], dtype=bool))
        >>> enc.finish()
        '2 2 6 1'
    """

    def __init__(self, what: str = "mask") -> None:
        self._what = what
        self._offset = 0
        self._last = False  # value of the previous pixel (the padding 0 before the first)
        self._boundaries: list[np.ndarray] = []
        self._finished = False

    @property
    def num_pixels(self) -> int:
        """Pixels encoded so far."""
        return self._offset

    def update(self, pixels: np.ndarray) -> None:
        """Appends ``pixels`` (any shape, flattened in C order; bool or numeric 0/1) to the mask.

        Raises:
            ValueError: Values other than 0/1, a non-numeric dtype, or a call after `finish`.
        """
        if self._finished:
            raise ValueError("RleEncoder.update called after finish()")
        flat = _as_bool_chunk(np.asarray(pixels), self._what)
        n = flat.size
        if n == 0:
            return
        steps = np.diff(flat.view(np.int8))
        # A boundary at i means pixel i differs from pixel i - 1; they alternate run start / run end.
        inner = np.flatnonzero(steps)
        inner += 1 + self._offset
        if bool(flat[0]) != self._last:
            self._boundaries.append(np.array([self._offset], dtype=np.int64))
        if inner.size:
            self._boundaries.append(inner.astype(np.int64, copy=False))
        self._last = bool(flat[-1])
        self._offset += n

    def finish(self) -> str:
        """The encoding of everything passed to `update` (``""`` when no pixel is set)."""
        if self._finished:
            raise ValueError("RleEncoder.finish called twice")
        self._finished = True
        if self._last:  # the trailing padding 0 closes the last run
            self._boundaries.append(np.array([self._offset], dtype=np.int64))
        if not self._boundaries:
            return ""
        bounds = np.concatenate(self._boundaries)
        self._boundaries = []
        # In place: bounds becomes interleaved (1-based start, length) pairs.
        bounds[1::2] -= bounds[0::2]
        bounds[0::2] += 1
        return " ".join(
            " ".join(map(str, bounds[i : i + _FORMAT_CHUNK].tolist())) for i in range(0, bounds.size, _FORMAT_CHUNK)
        )


def rle_encode(mask: np.ndarray, *, chunk_pixels: int = DEFAULT_CHUNK_PIXELS) -> str:
    """Kaggle run-length encoding of a binary mask.

    Args:
        mask: Array of at least one dimension (usually ``[H, W]``), bool or numeric with values 0/1.
        chunk_pixels: Pixels processed at a time (bounds the working memory, see the module docstring).

    Returns:
        ``"start length start length ..."`` with 1-based starts in row-major order; ``""`` for an empty mask.

    Raises:
        ValueError: A 0-d input, values other than 0/1, a non-numeric dtype or a non-positive ``chunk_pixels``.
    """
    mask = np.asarray(mask)
    if mask.ndim == 0:
        raise ValueError("rle_encode needs a mask with at least one dimension, got a scalar")
    if chunk_pixels <= 0:
        raise ValueError(f"chunk_pixels must be positive, got {chunk_pixels}")
    encoder = RleEncoder("rle_encode mask")
    row = math.prod(mask.shape[1:])
    # Chunks along the first axis are consecutive in C order, whatever the array's strides.
    rows = max(1, chunk_pixels // max(row, 1))
    for r0 in range(0, mask.shape[0], rows):
        encoder.update(mask[r0 : r0 + rows])
    return encoder.finish()


def rle_decode(rle: str, shape: tuple[int, ...]) -> np.ndarray:
    """Decodes a Kaggle run-length string into a bool mask of ``shape``.

    Args:
        rle: ``"start length ..."`` pairs, 1-based starts, runs sorted and not overlapping; ``""`` for none.
        shape: Shape of the mask (row-major order), e.g. ``(H, W)``.

    Returns:
        bool array of ``shape``.

    Raises:
        ValueError: Not a str, non-integer tokens, an odd count, a start < 1, a length < 1, unsorted or
            overlapping runs, a run past the end of the mask, or a bad shape.
    """
    if not isinstance(rle, str):
        raise ValueError(f"rle must be a str, got {type(rle).__name__}")
    shape = tuple(shape)
    if not shape or not all(isinstance(s, int | np.integer) and not isinstance(s, bool) and s >= 0 for s in shape):
        raise ValueError(f"shape must be a non-empty tuple of non-negative ints, got {shape!r}")
    total = math.prod(shape)
    tokens = rle.split()
    try:
        numbers = np.array([int(t) for t in tokens], dtype=np.int64)
    except ValueError as e:
        raise ValueError(f"rle has a token that is not an integer: {e}") from None
    if numbers.size % 2:
        raise ValueError(f"rle must hold (start, length) pairs, got an odd number of values ({numbers.size})")
    starts = numbers[0::2] - 1
    lengths = numbers[1::2]
    ends = starts + lengths
    if numbers.size:
        if starts.min() < 0:
            raise ValueError(f"rle starts are 1-based, got start {int(starts.min()) + 1}")
        if lengths.min() < 1:
            raise ValueError(f"rle lengths must be >= 1, got {int(lengths.min())}")
        if np.any(starts[1:] < ends[:-1]):
            i = int(np.flatnonzero(starts[1:] < ends[:-1])[0])
            raise ValueError(f"rle runs must be sorted and not overlap: run {i + 2} starts before run {i + 1} ends")
        if ends[-1] > total:
            raise ValueError(f"rle run ends at pixel {int(ends[-1])}, past the {total} pixels of shape {shape}")
    steps = np.zeros(total + 1, dtype=np.int8)
    steps[starts] += 1
    steps[ends] -= 1
    # Runs do not overlap, so the running sum is 0/1 and fits in int8.
    out = np.cumsum(steps[:total], dtype=np.int8).view(np.bool_)
    return out.reshape(shape)
