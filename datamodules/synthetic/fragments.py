"""Synthetic papyrus fragments written in the real on-disk layout, for tests, demos and benchmarks.

This file is the writer: the folder layout, the TIFF and PNG variants the real data comes in, and the
completeness rules that let a crashed run be resumed. What the pixels are is the generator's job
(`datamodules.synthetic.generator`), and the single-slice bound that shows the ink needs learning is
`datamodules.synthetic.single_slice`. The package exports `make_fragment`, `make_demo_data`, `Realism` and
the faint regime.

Every file is written under a temporary name in its folder and renamed when complete, and the slices come
before the PNGs, so a crash never leaves a folder that looks whole.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image

from datamodules.reading.fragment import volume_candidates
from datamodules.synthetic.generator import (
    FAINT_INK_CONTRAST,
    FAINT_REALISM,
    INK_CONTRAST,
    Realism,
    SyntheticVolume,
    check_volume_args,
)
from datamodules.synthetic.maps import check_map_args, remove_maps, write_maps
from datamodules.synthetic.zarr_writer import ZARR_FORMATS, write_zarr_volume
from utils.atomic import TMP_SUFFIX, atomic_path
from utils.checks import check_int
from utils.png import write_png

# Realism and the faint regime are arguments of make_fragment, so callers find them where they find it.
__all__ = ["FAINT_INK_CONTRAST", "FAINT_REALISM", "Realism", "make_demo_data", "make_fragment", "slice_name"]

_COMPRESSIONS = (None, "lzw", "zlib")
VOLUME_FORMATS = ("tiff", "zarr", "ome-zarr")
_TILE = (64, 64)
_PNG_NAMES = ("ir.png", "inklabels.png", "mask.png")  # written in this order, after the slices
_TEMP_SUFFIXES = (TMP_SUFFIX, ".partial")  # .partial: the temporary names of earlier versions of this writer


def slice_name(index: int, depth: int) -> str:
    """File name of slice ``index`` in a volume of ``depth`` slices: 2-digit zero-padded, 3 digits past 100."""
    return f"{index:0{max(2, len(str(depth - 1)))}d}.tif"


def make_fragment(
    root: str | Path,
    height: int,
    width: int,
    *,
    depth: int = 65,
    seed: int = 0,
    layers_dirname: str = "surface_volume",
    dtype: str = "uint16",
    compression: str | None = None,
    tiled: bool = False,
    reverse_depth: bool = False,
    with_labels: bool = True,
    with_mask: bool = True,
    surface_z: float | None = None,
    ink_contrast: float = INK_CONTRAST,
    realism: Realism | None = None,
    volume_format: str = "tiff",
    zarr_format: int = 3,
    chunks: tuple[int, int, int] | None = None,
    map_layout: str = "kaggle",
    label_style: str = "binary",
    label_suffix: str = ".png",
) -> Path:
    """Writes one synthetic fragment folder at ``root`` (``root`` IS the fragment folder) and returns it.

    Layout: ``<root>/<layers_dirname>/00.tif …`` (``depth`` 2-D slices), then ``ir.png``, ``inklabels.png``
    (0/255) and ``mask.png`` (0/255), last, so that a folder holding ``mask.png`` and all slices is complete.
    Rewriting a folder first removes its PNGs, stale numbered slices and temporary files.

    Args:
        root: the fragment folder to write; created if missing.
        height: image height in pixels.
        width: image width in pixels.
        depth: number of slices.
        seed: random seed; the same arguments always give the same bytes.
        layers_dirname: slice folder name (``surface_volume`` for fragments, ``layers`` for segments).
        dtype: ``"uint16"`` or ``"uint8"``.
        compression: ``None``, ``"lzw"`` or ``"zlib"``.
        tiled: write 64x64-tiled TIFFs instead of strips.
        reverse_depth: store the slices in reversed depth order (file 0 holds the deepest slice).
        with_labels: write ``inklabels.png``.
        with_mask: write ``mask.png`` and give the papyrus irregular margins; without it the sheet covers the
            whole frame, as a missing mask means "all valid".
        surface_z: mean surface depth in slices; default 30 for 65 slices, scaled with ``depth``.
        ink_contrast: ink's brightness at its peak, as a fraction of the dtype's range (default 0.022: equal
            to the per-pixel noise; the demo uses more so a CPU run learns within minutes).
        realism: patchy ink, loose labels, varying sheet thickness, ink that displaces the surface (see
            `Realism`); None: none of these (clean strokes, exact labels, a sheet of constant thickness).
        volume_format: ``"tiff"`` (numbered slices), ``"zarr"`` (``<layers_dirname>.zarr``, an array) or
            ``"ome-zarr"`` (the same name, an OME-Zarr group whose level 0 is the array). Zarr volumes are
            written one chunk-depth slab at a time and renamed into place when complete.
        zarr_format: 2 or 3 (zarr formats only).
        chunks: zarr chunk shape ``(z, y, x)``; default ``(8, 128, 128)`` (see `datamodules.synthetic.zarr_writer`).
        map_layout: how the maps are named: ``kaggle`` (``mask.png``, ``inklabels.png``), ``segment``
            (``<id>_mask.png``, ``<id>_inklabels…``) or ``monorepo`` (versioned labels, supervision and validation
            masks); see `datamodules.synthetic.maps`.
        label_style: how the labels are stored: ``binary``, ``grey`` (anti-aliased), ``palette``, ``rgba``,
            ``grey-alpha`` or ``16-bit``.
        label_suffix: the labels' format: ``.png``, ``.tif`` (strips), ``.tiff`` (tiles) or ``.zarr``.

    Returns:
        The fragment folder.

    Raises:
        ValueError: a size, seed, dtype, compression, format, folder name or surface depth is invalid, or
            ``root`` already holds another volume (another slice folder, a ``.zarr`` or a ``.url``).
    """
    check_volume_args(height, width, depth, seed, dtype, surface_z, ink_contrast)
    check_map_args(map_layout, label_style, label_suffix)
    if compression not in _COMPRESSIONS:
        raise ValueError(f"compression must be one of {_COMPRESSIONS}, got {compression!r}")
    if not layers_dirname or Path(layers_dirname).name != layers_dirname or layers_dirname in (".", ".."):
        raise ValueError(f"layers_dirname must be a plain folder name, got {layers_dirname!r}")
    if volume_format not in VOLUME_FORMATS:
        raise ValueError(f"volume_format must be one of {VOLUME_FORMATS}, got {volume_format!r}")
    zarr = volume_format != "tiff"
    if zarr and (compression is not None or tiled):
        raise ValueError("compression and tiled apply to TIFF slices; zarr volumes use zarr's default codec")
    if zarr and zarr_format not in ZARR_FORMATS:
        raise ValueError(f"zarr_format must be 2 or 3, got {zarr_format!r}")
    root = Path(root)
    volume_dir = root / (f"{layers_dirname}.zarr" if zarr else layers_dirname)
    if root.is_dir():
        for other in volume_candidates(root):
            if other != volume_dir:
                held = (
                    f"a {other.name}/ slice folder"
                    if other.is_dir() and not other.suffix
                    else f"the volume {other.name}"
                )
                raise ValueError(
                    f"'{root}' already holds {held}; writing {volume_dir.name} beside it would leave two volumes in "
                    "one fragment: use an empty folder"
                )
    (root if zarr else volume_dir).mkdir(parents=True, exist_ok=True)
    # The maps go first and come back last, so a folder holding its mask never mixes old and new slices.
    remove_maps(root)
    if not zarr:
        _remove_stale(volume_dir, depth)

    volume = SyntheticVolume(
        height,
        width,
        depth=depth,
        seed=seed,
        dtype=dtype,
        surface_z=surface_z,
        with_mask=with_mask,
        ink_contrast=ink_contrast,
        realism=realism,
    )
    slice_buf = np.empty((height, width), dtype=dtype)
    depths = [depth - 1 - i if reverse_depth else i for i in range(depth)]  # in file order
    if zarr:
        planes = (volume.render_slice(z, slice_buf) for z in depths)
        ome = volume_format == "ome-zarr"
        write_zarr_volume(
            volume_dir, planes, (depth, height, width), dtype, chunks=chunks, zarr_format=zarr_format, ome=ome
        )
    else:
        for file_index, z in enumerate(depths):
            image = volume.render_slice(z, slice_buf)
            _write_tiff(volume_dir / slice_name(file_index, depth), image, compression, tiled)
    del slice_buf

    write_png(root / "ir.png", volume.infrared())
    labels, mask = (volume.labels if with_labels else None), (volume.mask if with_mask else None)
    write_maps(root, labels, mask, layout=map_layout, style=label_style, suffix=label_suffix)
    return root


def make_demo_data(
    data_dir: str | Path,
    *,
    num_fragments: int = 2,
    height: int = 384,
    width: int = 384,
    depth: int = 65,
    seed: int = 0,
    ink_contrast: float = INK_CONTRAST,
    realism: Realism | None = None,
) -> list[Path]:
    """Writes fragments ``frag1``, ``frag2``, … under ``data_dir``, skipping those already complete.

    Fragment ``i`` (1-based) uses seed ``seed + i - 1``. A fragment counts as complete when all its slices,
    ``ir.png``, ``inklabels.png`` and ``mask.png`` exist and the mask has the requested size; an incomplete
    one (e.g. from a crashed run) is written again.

    Args:
        data_dir: folder to hold the fragments; created if missing.
        num_fragments: how many fragments.
        height: image height of each fragment.
        width: image width of each fragment.
        depth: slices per fragment.
        seed: seed of the first fragment.
        ink_contrast: see `make_fragment`.
        realism: see `make_fragment`.

    Returns:
        The fragment folders, in order.

    Raises:
        ValueError: ``num_fragments`` < 1 or an invalid size or seed.
    """
    check_int("num_fragments", num_fragments, minimum=1)
    data_dir = Path(data_dir)
    if data_dir.exists() and not data_dir.is_dir():
        raise ValueError(f"data_dir '{data_dir}' exists and is not a folder")
    paths = []
    for i in range(1, num_fragments + 1):
        path = data_dir / f"frag{i}"
        if not _is_complete(path, height, width, depth):
            make_fragment(
                path, height, width, depth=depth, seed=seed + i - 1, ink_contrast=ink_contrast, realism=realism
            )
        paths.append(path)
    return paths


def _remove_stale(volume_dir: Path, depth: int) -> None:
    """Removes temporary files and numbered slices that this depth does not write."""
    keep = {slice_name(i, depth) for i in range(depth)}
    for path in volume_dir.iterdir():
        stale_slice = re.fullmatch(r"\d+\.tiff?", path.name, re.IGNORECASE) and path.name not in keep
        if path.is_file() and (stale_slice or path.name.endswith(_TEMP_SUFFIXES)):
            path.unlink()


def _is_complete(path: Path, height: int, width: int, depth: int) -> bool:
    volume_dir = path / "surface_volume"
    names = [volume_dir / slice_name(i, depth) for i in range(depth)] + [path / n for n in _PNG_NAMES]
    if not all(p.is_file() for p in names):
        return False
    try:
        with Image.open(path / "mask.png") as img:
            return img.size == (width, height)
    except Exception:
        return False


def _write_tiff(path: Path, image: np.ndarray, compression: str | None, tiled: bool) -> None:
    with atomic_path(path, fsync=False) as temp, open(temp, "wb") as handle:
        tifffile.imwrite(
            handle,
            image,
            photometric="minisblack",
            compression=compression,
            tile=_TILE if tiled else None,
            metadata=None,
        )
