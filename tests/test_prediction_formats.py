"""utils/prediction_formats.py: each output format written from row bands, whole files or none."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from utils.prediction_formats import FORMATS, FragmentOutput, PredictionBand, write_submission_csv
from utils.rle import rle_decode


def _bands(prob: np.ndarray, mask: np.ndarray, rows: int) -> list[PredictionBand]:
    return [PredictionBand(prob[r : r + rows], mask[r : r + rows]) for r in range(0, prob.shape[0], rows)]


def test_png_and_rle_formats_write_what_the_bands_hold(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    prob = rng.random((7, 5), dtype=np.float32) * 1.2 - 0.1  # upsampling may overshoot [0, 1] a little
    mask = prob > 0.5
    out = FragmentOutput(tmp_path, "frag", (7, 5))
    for name in ("png", "rle"):
        with FORMATS[name](out) as write:
            for band in _bands(prob, mask, 3):
                write(band)
    assert out.written == [tmp_path / "frag_prediction.png", tmp_path / "frag_mask.png"]
    with Image.open(out.written[0]) as image:
        assert np.array_equal(np.array(image), np.rint(np.clip(prob, 0, 1) * 255).astype(np.uint8))
    with Image.open(out.written[1]) as image:
        assert np.array_equal(np.array(image), mask.astype(np.uint8) * 255)
    assert [fid for fid, _ in out.submission] == ["frag"]
    assert np.array_equal(rle_decode(out.submission[0][1], (7, 5)), mask)
    path = write_submission_csv(tmp_path, out.submission)
    with open(path, newline="") as f:
        assert list(csv.reader(f)) == [["Id", "Predicted"], ["frag", out.submission[0][1]]]


def test_an_error_midway_leaves_no_file(tmp_path: Path) -> None:
    out = FragmentOutput(tmp_path, "frag", (4, 3))
    with pytest.raises(RuntimeError, match="boom"), FORMATS["png"](out) as write:
        write(PredictionBand(np.zeros((2, 3), np.float32), np.zeros((2, 3), bool)))
        raise RuntimeError("boom")
    assert not list(tmp_path.iterdir()) and not out.written
