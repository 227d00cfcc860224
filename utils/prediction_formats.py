"""The output formats of a prediction run: one function per format, so adding a format is adding one function.

`callbacks.prediction_writer.InkPredictionWriter` upsamples each fragment's stitched map in row bands and feeds
every band to the formats it was given by name (`FORMATS`). A format is a context manager function: entered
once per fragment with a `FragmentOutput`, it yields a function that takes each `PredictionBand` in order,
top to bottom; on a normal exit the fragment's files are complete. Every file is written under a temporary name
and renamed when complete, so an error (the exit with an exception) leaves no partial file.

Formats:

- ``png``: ``<id>_prediction.png`` (probabilities as 8-bit grey, ``round(255 * p)``) and ``<id>_mask.png``
  (255 where the band's mask is set, else 0);
- ``rle``: one ``Id,Predicted`` row of ``submission.csv`` per fragment: the Kaggle run-length encoding
  (`utils.rle`) of the mask; `write_submission_csv` writes the rows after the last fragment;
- ``tiff``: ``<id>_prediction.tif``, the 8-bit probabilities as a tiled (256²), zlib-compressed BigTIFF with
  reduced-resolution levels (`utils.pyramid`); the rows go to a disk-backed scratch file until the last band;
- ``zarr``: ``<id>_prediction.zarr``, the same as an OME-Zarr multiscale group (NGFF 0.4), written band by band.

Probabilities become 8-bit grey the same way in every format (`grey_levels`).
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from utils.atomic import atomic_open, atomic_path, temporary_sibling
from utils.png import StreamingPngWriter
from utils.pyramid import OmeZarrWriter, write_tiff_pyramid
from utils.rle import RleEncoder

SUBMISSION_CSV = "submission.csv"


@dataclass(frozen=True)
class PredictionBand:
    """Consecutive full-width rows of one fragment's prediction at full resolution.

    Attributes:
        prob: float32 ``[n, W]`` ink probabilities, finite (not clipped: upsampling may overshoot [0, 1] slightly).
        mask: bool ``[n, W]``: ink, i.e. ``prob > threshold`` inside the valid (papyrus, covered) map.
    """

    prob: np.ndarray
    mask: np.ndarray


@dataclass
class FragmentOutput:
    """What a format needs to know about the fragment it writes, and where it records what it wrote.

    Attributes:
        output_dir: The run's output folder (exists and is writable).
        fragment_id: The fragment's id, already checked to be usable in a file name.
        shape: ``(H, W)``, the full resolution the bands have.
        written: Paths written so far in the run; a format appends each file it completes.
        submission: ``(fragment id, RLE)`` rows of ``submission.csv`` so far in the run.
    """

    output_dir: Path
    fragment_id: str
    shape: tuple[int, int]
    written: list[Path] = field(default_factory=list)
    submission: list[tuple[str, str]] = field(default_factory=list)


BandWriter = Callable[[PredictionBand], None]


def grey_levels(prob: np.ndarray) -> np.ndarray:
    """uint8 ``round(255 * clip(p, 0, 1))``; the caller's array is never modified."""
    scaled = np.clip(prob, 0.0, 1.0)
    scaled *= 255.0
    return np.rint(scaled, out=scaled).astype(np.uint8)


Format = Callable[[FragmentOutput], AbstractContextManager[BandWriter]]


@contextmanager
def png_format(out: FragmentOutput) -> Iterator[BandWriter]:
    """Writes ``<id>_prediction.png`` and ``<id>_mask.png`` band by band (see the module docstring)."""
    prob_path = out.output_dir / f"{out.fragment_id}_prediction.png"
    mask_path = out.output_dir / f"{out.fragment_id}_mask.png"
    height, width = out.shape
    with atomic_open(prob_path, "wb") as prob_file, atomic_open(mask_path, "wb") as mask_file:
        prob_png = StreamingPngWriter(prob_file, height, width)
        mask_png = StreamingPngWriter(mask_file, height, width)

        def write(band: PredictionBand) -> None:
            prob_png.write_rows(grey_levels(band.prob))
            mask_png.write_rows(band.mask.view(np.uint8) * np.uint8(255))

        yield write
        prob_png.close()
        mask_png.close()
    out.written += [prob_path, mask_path]


@contextmanager
def rle_format(out: FragmentOutput) -> Iterator[BandWriter]:
    """Adds the fragment's ``submission.csv`` row: the run-length encoding of its mask."""
    encoder = RleEncoder(f"mask of fragment {out.fragment_id!r}")
    yield lambda band: encoder.update(band.mask)
    out.submission.append((out.fragment_id, encoder.finish()))


@contextmanager
def tiff_format(out: FragmentOutput) -> Iterator[BandWriter]:
    """Writes ``<id>_prediction.tif`` (a BigTIFF pyramid) once all bands are in a disk-backed scratch image."""
    path = out.output_dir / f"{out.fragment_id}_prediction.tif"
    scratch = temporary_sibling(path)  # the full-resolution image, disk-backed until the pyramid is written
    image = np.memmap(scratch, dtype=np.uint8, mode="w+", shape=out.shape)
    row = 0

    def write(band: PredictionBand) -> None:
        nonlocal row
        image[row : row + band.prob.shape[0]] = grey_levels(band.prob)
        row += band.prob.shape[0]

    try:
        yield write
        with atomic_path(path) as tmp:
            write_tiff_pyramid(tmp, image, out.output_dir)
    finally:
        scratch.unlink(missing_ok=True)  # the map stays readable until released; the disk space is freed then
    out.written.append(path)


@contextmanager
def zarr_format(out: FragmentOutput) -> Iterator[BandWriter]:
    """Writes ``<id>_prediction.zarr`` (OME-Zarr multiscales) band by band; it appears only when complete."""
    path = out.output_dir / f"{out.fragment_id}_prediction.zarr"
    writer = OmeZarrWriter(path, out.shape, out.fragment_id)
    try:
        yield lambda band: writer.write_rows(grey_levels(band.prob))
        writer.close()
    except BaseException:
        writer.abort()
        raise
    out.written.append(path)


FORMATS: dict[str, Format] = {"tiff": tiff_format, "png": png_format, "rle": rle_format, "zarr": zarr_format}


def write_submission_csv(output_dir: Path, rows: list[tuple[str, str]]) -> Path:
    """Writes ``<output_dir>/submission.csv`` (header ``Id,Predicted``, one row per fragment) atomically.

    Returns:
        The path written.
    """
    path = output_dir / SUBMISSION_CSV
    with atomic_open(path, "w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["Id", "Predicted"])
        writer.writerows(rows)
    return path
