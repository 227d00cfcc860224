"""A synthetic fragment's 2-D maps written as the community writes them: each layout's names, each label storage.

`datamodules.synthetic.make_fragment` calls `write_maps` after the slices. Layouts (`datamodules.reading.layouts`):

- ``kaggle``: ``mask.png``, ``inklabels<suffix>``;
- ``segment`` (published scroll segments, the Grand Prize code): ``<id>_mask.png``, ``<id>_inklabels<suffix>``;
- ``monorepo`` (the challenge's monorepo): ``<id>_mask.png``, ``<id>_inklabels_v2<suffix>`` beside an older, empty
  ``<id>_inklabels<suffix>`` (version 1, which must lose), ``<id>_supervision_mask.png`` (the papyrus less its
  left eighth: an unlabelled strip) and ``<id>_validation_mask.png`` (rows 60-80 % of the height).

Label storages (`datamodules.reading.label_rules` says how each is read): ``binary`` (0/255), ``grey`` (anti-aliased:
the labels averaged over 3x3 pixels, so edges take every level), ``palette`` (indices into a black/red palette),
``rgba`` (white ink on transparent), ``grey-alpha``, ``16-bit`` (grey levels x 257). Suffixes: ``.png``, ``.tif``
(strips, zlib), ``.tiff`` (64x64 tiles, zlib), ``.zarr`` (grey and binary only).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tifffile
from PIL import Image

from datamodules.synthetic.zarr_writer import write_zarr_map
from utils.atomic import atomic_path
from utils.png import write_png

MAP_LAYOUTS = ("kaggle", "segment", "monorepo")
LABEL_STYLES = ("binary", "grey", "palette", "rgba", "grey-alpha", "16-bit")
LABEL_SUFFIXES = (".png", ".tif", ".tiff", ".zarr")
_MAP_SUFFIXES = (".png", ".tif", ".tiff")


def check_map_args(layout: str, style: str, suffix: str) -> None:
    """Rejects an unknown layout, label style or suffix, or a style the suffix cannot store."""
    if layout not in MAP_LAYOUTS:
        raise ValueError(f"map_layout must be one of {MAP_LAYOUTS}, got {layout!r}")
    if style not in LABEL_STYLES:
        raise ValueError(f"label_style must be one of {LABEL_STYLES}, got {style!r}")
    if suffix not in LABEL_SUFFIXES:
        raise ValueError(f"label_suffix must be one of {LABEL_SUFFIXES}, got {suffix!r}")
    if suffix == ".zarr" and style not in ("binary", "grey", "16-bit"):
        raise ValueError(f"label_style {style!r} has no zarr form (zarr maps are one channel)")


def anti_aliased(labels: np.ndarray) -> np.ndarray:
    """Binary labels as hand-painted ones look: the 3x3 mean of 0/255, uint8, so stroke edges are grey."""
    padded = np.pad(labels.astype(np.uint16) * 255, 1, mode="edge")
    height, width = labels.shape
    total = sum(padded[dy : dy + height, dx : dx + width] for dy in range(3) for dx in range(3))
    return ((total + 4) // 9).astype(np.uint8)


def grey_levels(labels: np.ndarray, style: str) -> np.ndarray:
    """The 0..255 levels a label storage holds (what reading it must give back)."""
    return labels.astype(np.uint8) * 255 if style in ("binary", "palette") else anti_aliased(labels)


def remove_maps(root: Path) -> None:
    """Removes every map file of a fragment folder (before rewriting it): PNG / TIFF files and map zarrs."""
    for path in root.iterdir():
        is_map_zarr = path.suffix == ".zarr" and ("mask" in path.name or "inklabels" in path.name)
        if path.is_file() and path.suffix.lower() in _MAP_SUFFIXES:
            path.unlink()
        elif path.is_dir() and is_map_zarr:
            import shutil

            shutil.rmtree(path)


def write_label_map(path: Path, labels: np.ndarray, style: str) -> Path:
    """Writes bool ``labels`` at ``path`` (its suffix picks the format) in a label ``style``; atomically."""
    levels = grey_levels(labels, style)
    suffix = path.suffix.lower()
    if suffix == ".zarr":
        return write_zarr_map(path, levels.astype(np.uint16) * 257 if style == "16-bit" else levels)
    if style == "palette":
        image = Image.fromarray(labels.astype(np.uint8), mode="P")
        image.putpalette([0, 0, 0, 255, 0, 0])  # background black, ink red: read by its brightest channel
        pixels = None
    else:
        pixels = {
            "binary": levels,
            "grey": levels,
            "16-bit": levels.astype(np.uint16) * 257,
            "rgba": np.stack([np.full_like(levels, 255)] * 3 + [levels], axis=-1),  # white ink, coverage as alpha
            "grey-alpha": np.stack([np.full_like(levels, 255), levels], axis=-1),
        }[style]
    if suffix == ".png":
        if pixels is not None and pixels.dtype == np.uint8 and pixels.ndim == 2:
            return write_png(path, pixels)
        with atomic_path(path, fsync=False) as temp:
            (image if pixels is None else Image.fromarray(pixels)).save(temp, format="PNG")
        return path
    with atomic_path(path, fsync=False) as temp:
        if pixels is None:  # a palette TIFF: tifffile's colormap is 3 x 256 uint16
            colormap = np.zeros((3, 256), np.uint16)
            colormap[0, 1] = 65535
            tifffile.imwrite(temp, labels.astype(np.uint8), photometric="palette", colormap=colormap)
        else:
            extra = {"extrasamples": ["unassalpha"]} if style in ("rgba", "grey-alpha") else {}
            photometric = "rgb" if style == "rgba" else "minisblack"
            tiles = {"tile": (64, 64)} if suffix == ".tiff" else {"rowsperstrip": 16}
            tifffile.imwrite(temp, pixels, photometric=photometric, compression="zlib", **tiles, **extra)
    return path


def write_maps(
    root: Path,
    labels: np.ndarray | None,
    mask: np.ndarray | None,
    *,
    layout: str = "kaggle",
    style: str = "binary",
    suffix: str = ".png",
) -> dict[str, Path]:
    """Writes a fragment's mask and labels (and, for ``monorepo``, its other maps) in a layout; returns them by role.

    The mask goes last, so that a folder holding it is complete.
    """
    check_map_args(layout, style, suffix)
    fid = root.name
    written: dict[str, Path] = {}
    if labels is not None:
        name = {"kaggle": "inklabels", "segment": f"{fid}_inklabels", "monorepo": f"{fid}_inklabels_v2"}[layout]
        if layout == "monorepo":  # version 1: an older, empty label set, which version 2 must win over
            write_label_map(root / f"{fid}_inklabels{suffix}", np.zeros_like(labels), style)
        written["inklabels"] = write_label_map(root / f"{name}{suffix}", labels, style)
    if layout == "monorepo" and (labels is not None or mask is not None):
        papyrus = mask if mask is not None else np.ones(labels.shape, bool)
        height, width = papyrus.shape
        supervision = papyrus.copy()
        supervision[:, : width // 8] = False
        validation = np.zeros_like(papyrus)
        validation[int(0.6 * height) : int(0.8 * height)] = True
        written["supervision"] = write_png(root / f"{fid}_supervision_mask.png", supervision.astype(np.uint8) * 255)
        written["validation"] = write_png(root / f"{fid}_validation_mask.png", validation.astype(np.uint8) * 255)
    if mask is not None:
        name = "mask.png" if layout == "kaggle" else f"{fid}_mask.png"
        written["mask"] = write_png(root / name, mask.astype(np.uint8) * 255)
    return written
