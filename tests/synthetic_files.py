"""Reading back the files of synthetic fragments, for the tests of the generator and its writer."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tifffile
from PIL import Image


def slice_paths(fragment: Path, dirname: str = "surface_volume") -> list[Path]:
    """The fragment's slice files, in numeric order."""
    return sorted((fragment / dirname).glob("*.tif"), key=lambda p: int(p.stem))


def read_volume(fragment: Path, dirname: str = "surface_volume") -> np.ndarray:
    """The fragment's slices stacked as ``[Z, H, W]`` (file order)."""
    return np.stack([tifffile.imread(p) for p in slice_paths(fragment, dirname)])


def read_png(path: Path) -> np.ndarray:
    """A PNG's pixels as stored."""
    with Image.open(path) as img:
        return np.asarray(img)
