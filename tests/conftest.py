"""Shared fixtures: tiny fragments written to tmp_path in the real on-disk layout."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image

from datamodules.reading.fragment import Fragment


def write_fragment(
    root: Path,
    volume: np.ndarray,
    *,
    mask: np.ndarray | None = None,
    labels: np.ndarray | None = None,
    dirname: str = "surface_volume",
    digits: int = 2,
    compression: str | None = None,
    tile: tuple[int, int] | None = None,
) -> Path:
    """Writes ``volume`` [Z, H, W] as numbered slices, plus mask.png / inklabels.png (0/255) when given."""
    slices = root / dirname
    slices.mkdir(parents=True, exist_ok=True)
    for z, image in enumerate(volume):
        tifffile.imwrite(slices / f"{z:0{digits}d}.tif", image, compression=compression, tile=tile)
    if mask is not None:
        Image.fromarray(mask.astype(np.uint8) * 255).save(root / "mask.png")
    if labels is not None:
        Image.fromarray(labels.astype(np.uint8) * 255).save(root / "inklabels.png")
    return root


def random_fragment_arrays(
    shape: tuple[int, int, int], seed: int = 0, dtype: type = np.uint16
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A random volume, a mask with a non-papyrus margin and blob-like labels inside it."""
    rng = np.random.default_rng(seed)
    depth, height, width = shape
    volume = rng.integers(0, np.iinfo(dtype).max, size=shape, dtype=dtype)
    mask = np.zeros((height, width), dtype=bool)
    mask[2:-2, 3:-3] = True
    labels = (rng.random((height, width)) < 0.2) & mask
    return volume, mask, labels


def f05_of_predicting_ink_everywhere(fragment_dir: Path) -> float:
    """F0.5 of the all-ink prediction inside the mask: precision = ink fraction, recall = 1."""
    fragment = Fragment(fragment_dir, z_start=0, z_end=1)
    precision = float(np.asarray(fragment.labels)[np.asarray(fragment.mask)].mean())
    return 1.25 * precision / (0.25 * precision + 1.0)


@pytest.fixture
def fragment_factory(tmp_path: Path):
    """Returns a function that writes a random fragment under tmp_path and gives back (folder, volume, mask, labels)."""

    def make(name: str = "frag", shape: tuple[int, int, int] = (12, 40, 48), seed: int = 0, **kwargs):
        dtype = kwargs.pop("dtype", np.uint16)
        volume, mask, labels = random_fragment_arrays(shape, seed, dtype)
        folder = write_fragment(tmp_path / "data" / name, volume, mask=mask, labels=labels, **kwargs)
        return folder, volume, mask, labels

    return make


@pytest.fixture
def one_thread():
    """One intra-op thread and a fixed torch seed: on a few shared cores, more threads stall each other on the
    tiny tensors of these tests. Use with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield
    torch.set_num_threads(threads)
