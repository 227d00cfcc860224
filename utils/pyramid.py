"""Multi-resolution prediction images: a tiled, compressed BigTIFF pyramid and an OME-Zarr multiscale group.

Both are built from a full-resolution uint8 image that may be a disk-backed ``np.memmap`` (or a zarr array): every
step reads and writes bounded row blocks, so memory does not grow with the segment. Each reduced level halves the
previous one by the mean of 2 × 2 blocks (edge rows/columns of odd sizes average what exists) until the image fits
one tile. Viewers (QuPath, napari, OpenSeadragon via libvips, neuroglancer for zarr) open such files lazily.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import tifffile

from utils.atomic import replace_folder, temporary_sibling

TILE = 256
ZARR_CHUNK = 1024
_BLOCK_PIXELS = 1 << 20  # pixels per block when reducing a level: a few MiB of float32 temporaries


def level_shapes(shape: tuple[int, int], tile: int = TILE) -> list[tuple[int, int]]:
    """Shapes of the full-resolution image and every reduced level down to one that fits in a tile."""
    shapes = [tuple(shape)]
    while max(shapes[-1]) > tile:
        h, w = shapes[-1]
        shapes.append((-(-h // 2), -(-w // 2)))
    return shapes  # type: ignore[return-value]


def ome_multiscales(axes: Sequence[str], zarr_format: int, *, name: str, levels: int = 1) -> dict:
    """OME-Zarr group attributes for ``levels`` levels ``0``, ``1``, ...: NGFF 0.4 for zarr v2, 0.5 (under ``ome``)
    for v3. Level ``i`` halves ``y`` and ``x`` ``i`` times (2 × 2 means); other axes keep their scale."""
    multiscale: dict = {
        "name": name,
        "axes": [{"name": a, "type": "space"} for a in axes],
        "datasets": [
            {
                "path": str(i),
                "coordinateTransformations": [
                    {"type": "scale", "scale": [2.0**i if a in ("y", "x") else 1.0 for a in axes]}
                ],
            }
            for i in range(levels)
        ],
    }
    if levels > 1:
        multiscale["type"] = "mean"
    if zarr_format == 2:
        return {"multiscales": [{"version": "0.4", **multiscale}]}
    return {"ome": {"version": "0.5", "multiscales": [multiscale]}}


def reduce_into(source: Any, target: Any) -> None:
    """Writes the 2 × 2 block mean of ``source`` into ``target`` (``ceil(h / 2) × ceil(w / 2)``), by row blocks."""
    h, w = source.shape
    rows = max(2, _BLOCK_PIXELS // max(1, w) // 2 * 2)  # even, so blocks pair rows
    for r0 in range(0, h, rows):
        block = np.asarray(source[r0 : r0 + rows], dtype=np.float32)
        if block.shape[0] % 2:
            block = np.concatenate([block, block[-1:]])
        if w % 2:
            block = np.concatenate([block, block[:, -1:]], axis=1)
        mean = (block[0::2, 0::2] + block[1::2, 0::2] + block[0::2, 1::2] + block[1::2, 1::2]) / 4
        target[r0 // 2 : r0 // 2 + mean.shape[0]] = np.rint(mean).astype(np.uint8)


def _tiles(image: Any, tile: int) -> Iterator[np.ndarray]:
    h, w = image.shape
    for y in range(0, h, tile):
        band = np.asarray(image[y : y + tile])
        for x in range(0, w, tile):
            yield band[:, x : x + tile]


def write_tiff_pyramid(path: Path, image: np.ndarray, scratch_dir: Path, tile: int = TILE) -> int:
    """Writes ``image`` (uint8 ``[H, W]``) to ``path`` as a tiled, zlib-compressed BigTIFF with reduced levels.

    The reduced levels are SubIFDs of the first page (the layout of OME-TIFF pyramids). They are computed into
    temporary memory-mapped files in ``scratch_dir``, removed afterwards.

    Returns:
        The number of levels written (the full resolution included).
    """
    shapes = level_shapes(image.shape, tile)
    levels: list[Any] = [image]
    scratch: list[Path] = []
    try:
        for shape in shapes[1:]:
            scratch.append(temporary_sibling(scratch_dir / f"level{len(scratch) + 1}"))
            level = np.memmap(scratch[-1], dtype=np.uint8, mode="w+", shape=shape)
            reduce_into(levels[-1], level)
            levels.append(level)
        options = {"dtype": np.uint8, "tile": (tile, tile), "compression": "zlib", "photometric": "minisblack"}
        with tifffile.TiffWriter(path, bigtiff=True) as tif:
            tif.write(_tiles(levels[0], tile), shape=shapes[0], subifds=len(shapes) - 1, **options)
            for level, shape in zip(levels[1:], shapes[1:]):
                tif.write(_tiles(level, tile), shape=shape, subfiletype=1, **options)
    finally:
        del levels
        for p in scratch:
            p.unlink(missing_ok=True)
    return len(shapes)


class OmeZarrWriter:
    """Writes an OME-Zarr (NGFF 0.4, zarr format 2) multiscale group row band by row band, then its reduced levels.

    The group is built under a temporary name beside ``path`` and renamed into place by `close`; `abort` removes it.
    """

    def __init__(self, path: Path, shape: tuple[int, int], name: str, chunk: int = ZARR_CHUNK) -> None:
        try:
            import zarr
        except ImportError as err:  # a clear message instead of a bare ImportError deep in a prediction run
            raise ImportError("the 'zarr' prediction format needs the zarr package (pip install 'zarr>=3')") from err
        self.path = Path(path)
        self.tmp = temporary_sibling(self.path)
        self.shapes = level_shapes(shape, chunk)
        self.group = zarr.open_group(str(self.tmp), mode="w", zarr_format=2)
        self.arrays = [
            self.group.create_array(str(i), shape=s, chunks=(min(chunk, s[0]), min(chunk, s[1])), dtype="uint8")
            for i, s in enumerate(self.shapes)
        ]
        self.group.attrs.update(ome_multiscales(("y", "x"), 2, name=name, levels=len(self.shapes)))
        self.row = 0

    def write_rows(self, rows: np.ndarray) -> None:
        """Appends full-resolution uint8 rows."""
        self.arrays[0][self.row : self.row + rows.shape[0]] = rows
        self.row += rows.shape[0]

    def close(self) -> None:
        """Builds the reduced levels and moves the group into place (replacing an earlier one)."""
        if self.row != self.shapes[0][0]:
            raise ValueError(f"OME-Zarr {self.path}: {self.row} of {self.shapes[0][0]} rows were written")
        for source, target in zip(self.arrays[:-1], self.arrays[1:]):
            reduce_into(source, target)
        replace_folder(self.tmp, self.path)

    def abort(self) -> None:
        """Removes the unfinished group."""
        shutil.rmtree(self.tmp, ignore_errors=True)
