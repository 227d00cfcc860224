"""utils/png.py: whole images written atomically, and the streaming row-band encoder; both read back by Pillow."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from utils.png import StreamingPngWriter, write_png


def test_write_png_round_trips_grey_and_rgb_through_pil(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    grey = rng.integers(0, 256, (5, 7), dtype=np.uint8)
    rgb = rng.integers(0, 256, (4, 3, 3), dtype=np.uint8)
    for name, image in (("grey.png", grey), ("sub/rgb.png", rgb)):
        path = write_png(tmp_path / name, image)
        with Image.open(path) as read:
            assert read.format == "PNG"
            assert np.array_equal(np.array(read), image)
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["grey.png", "rgb.png", "sub"]  # no temporary left


def test_write_png_rejects_other_dtypes_and_shapes(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="uint8"):
        write_png(tmp_path / "f.png", np.zeros((2, 2), np.float32))
    with pytest.raises(ValueError, match="uint8"):
        write_png(tmp_path / "f.png", np.zeros(4, np.uint8))
    assert not list(tmp_path.iterdir())


def test_streaming_png_writer_checks_rows() -> None:
    buffer = io.BytesIO()
    writer = StreamingPngWriter(buffer, 3, 4)
    with pytest.raises(ValueError, match="uint8"):
        writer.write_rows(np.zeros((1, 5), np.uint8))
    writer.write_rows(np.arange(8, dtype=np.uint8).reshape(2, 4))
    with pytest.raises(ValueError, match="too many"):
        writer.write_rows(np.zeros((2, 4), np.uint8))
    with pytest.raises(ValueError, match="only 2"):
        writer.close()
    writer.write_rows(np.full((1, 4), 250, np.uint8))
    writer.close()
    buffer.seek(0)
    assert np.array(Image.open(buffer)).tolist() == [[0, 1, 2, 3], [4, 5, 6, 7], [250] * 4]


def test_streaming_png_writer_round_trips_many_bands_through_pil() -> None:
    image = np.random.default_rng(1).integers(0, 256, (37, 11), dtype=np.uint8)
    buffer = io.BytesIO()
    writer = StreamingPngWriter(buffer, *image.shape, compress_level=9)
    for r0 in range(0, image.shape[0], 5):
        writer.write_rows(image[r0 : r0 + 5])
    writer.close()
    buffer.seek(0)
    with Image.open(buffer) as read:
        assert read.mode == "L" and np.array_equal(np.array(read), image)
    with pytest.raises(ValueError, match="size"):
        StreamingPngWriter(io.BytesIO(), 0, 4)
    with pytest.raises(ValueError, match="compress_level"):
        StreamingPngWriter(io.BytesIO(), 1, 4, compress_level=10)
