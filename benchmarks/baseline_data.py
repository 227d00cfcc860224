"""The baseline loop's data side: fragments read into RAM, training windows, augmentation and batches.

What a typical Kaggle notebook of the Vesuvius Challenge did, kept apart from the model and the training loop
(`benchmarks.baseline_loop`) so each reads on its own: the chosen slice range of every fragment is read as uint8
HWC (``v >> 8`` for uint16), training windows are the ``tile``-sized windows whose centre lies in the mask, and
albumentations augments them before a plain ``/ 255``. Like the loop, it imports nothing from the project, so a
change to the project's data code cannot silently change the yardstick.
"""

from __future__ import annotations

from pathlib import Path

import albumentations as A
import numpy as np
import tifffile
import torch
from PIL import Image

__all__ = ["Fragment", "build_augmentation", "grid_starts", "load_fragment", "make_batch", "train_windows"]


class Fragment:
    """A fragment held in RAM the way the notebooks hold it.

    Attributes:
        fragment_id: Folder name of the fragment.
        image: uint8 [H, W, D] slices ``z_start .. z_end - 1``.
        mask: bool [H, W], where papyrus is (all True when ``mask.png`` is absent).
        label: bool [H, W] ink labels, or None when ``inklabels.png`` is absent.
    """

    def __init__(self, fragment_id: str, image: np.ndarray, mask: np.ndarray, label: np.ndarray | None) -> None:
        self.fragment_id = fragment_id
        self.image = image
        self.mask = mask
        self.label = label

    @property
    def shape(self) -> tuple[int, int]:
        """(H, W) of the fragment."""
        return self.image.shape[0], self.image.shape[1]


def _slice_paths(root: Path) -> list[Path]:
    """Numbered slice files of a fragment, sorted numerically (``9.tif`` before ``10.tif``)."""
    for name in ("surface_volume", "layers"):
        folder = root / name
        if folder.is_dir():
            paths = [p for p in folder.iterdir() if p.suffix.lower() in (".tif", ".tiff") and p.stem.isdigit()]
            if paths:
                return sorted(paths, key=lambda p: int(p.stem))
    raise FileNotFoundError(f"no numbered .tif slices under {root}/surface_volume (or layers/)")


def _to_uint8(v: np.ndarray) -> np.ndarray:
    """One slice as uint8: the top byte of uint16 (what ``/255`` of an 8-bit read gives the notebooks)."""
    if v.dtype == np.uint8:
        return v
    if v.dtype == np.uint16:
        return (v >> 8).astype(np.uint8)
    raise TypeError(f"unsupported slice dtype {v.dtype}; expected uint8 or uint16")


def _read_png_bool(path: Path) -> np.ndarray:
    """A 0/255 PNG as a bool array (any channel layout; > 127 is True)."""
    return np.asarray(Image.open(path).convert("L")) > 127


def load_fragment(root: Path, z_start: int = 22, z_end: int = 38) -> Fragment:
    """Reads slices ``z_start .. z_end - 1`` of a fragment into RAM as uint8 HWC, plus mask and labels.

    Args:
        root: The fragment folder (``<data_dir>/<id>``).
        z_start: First slice index (position in numeric order, not the file name).
        z_end: One past the last slice index.

    Returns:
        The loaded Fragment.

    Raises:
        FileNotFoundError: When the folder has no slices.
        ValueError: When the fragment has fewer than ``z_end`` slices or shapes disagree.
    """
    paths = _slice_paths(root)
    if not 0 <= z_start < z_end <= len(paths):
        raise ValueError(f"{root}: slice range {z_start}..{z_end} outside the {len(paths)} slices present")
    first = _to_uint8(tifffile.imread(paths[z_start]))
    image = np.empty((*first.shape, z_end - z_start), dtype=np.uint8)
    image[..., 0] = first
    for i, path in enumerate(paths[z_start + 1 : z_end], start=1):
        image[..., i] = _to_uint8(tifffile.imread(path))
    hw = image.shape[:2]
    mask = _read_png_bool(root / "mask.png") if (root / "mask.png").exists() else np.ones(hw, dtype=bool)
    label = _read_png_bool(root / "inklabels.png") if (root / "inklabels.png").exists() else None
    for name, arr in (("mask.png", mask), ("inklabels.png", label)):
        if arr is not None and arr.shape != hw:
            raise ValueError(f"{root}: {name} is {arr.shape}, slices are {hw}")
    return Fragment(root.name, image, mask, label)


def train_windows(frag: Fragment, tile: int, stride: int) -> np.ndarray:
    """Top-left corners [N, 2] of the windows lying inside the fragment whose centre is in the mask."""
    h, w = frag.shape
    ys = np.arange(0, h - tile + 1, stride)
    xs = np.arange(0, w - tile + 1, stride)
    if len(ys) == 0 or len(xs) == 0:
        return np.zeros((0, 2), dtype=np.int64)
    yy, xx = np.meshgrid(ys, xs, indexing="ij")
    keep = frag.mask[yy + tile // 2, xx + tile // 2]
    return np.stack([yy[keep], xx[keep]], axis=1).astype(np.int64)


def grid_starts(size: int, tile: int, stride: int) -> list[int]:
    """Window starts covering ``0 .. size`` (the last window is flush with the edge, as padding would give)."""
    starts = list(range(0, max(size - tile, 0) + 1, stride))
    if starts[-1] + tile < size:
        starts.append(size - tile)
    return starts


def build_augmentation(tile: int, seed: int) -> A.Compose:
    """The notebooks' training augmentation, in albumentations 2.0 spelling, seeded.

    Args:
        tile: Tile size, for the dropout hole size (up to 20 % of the tile).
        seed: Seed of the Compose's own random state.

    Returns:
        A Compose applied to ``image`` (uint8 HWC) and ``mask`` (uint8 HW).
    """
    hole = max(1, int(tile * 0.2))
    return A.Compose(
        [
            A.HorizontalFlip(p=0.5),
            A.VerticalFlip(p=0.5),
            A.RandomRotate90(p=0.5),
            A.Affine(translate_percent=(-0.1, 0.1), scale=(0.9, 1.1), rotate=(-45, 45), p=0.75),
            A.RandomBrightnessContrast(p=0.75),
            A.OneOf([A.GaussNoise(), A.GaussianBlur(), A.MotionBlur()], p=0.4),
            A.CoarseDropout(
                num_holes_range=(1, 1),
                hole_height_range=(1, hole),
                hole_width_range=(1, hole),
                fill=0,
                fill_mask=0,
                p=0.5,
            ),
        ],
        seed=seed,
    )


def make_batch(
    frags: list[Fragment], windows: np.ndarray, picks: np.ndarray, tile: int, aug: A.Compose
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cuts, augments and stacks the picked windows ([N, 3] rows of fragment, y, x) into tensors."""
    images, labels = [], []
    for f, y, x in windows[picks]:
        frag = frags[f]
        image = frag.image[y : y + tile, x : x + tile]
        label = frag.label[y : y + tile, x : x + tile].astype(np.uint8)
        out = aug(image=image, mask=label)
        images.append(out["image"])
        labels.append(out["mask"])
    image_t = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float().div_(255.0)
    label_t = torch.from_numpy(np.stack(labels)).unsqueeze(1).float()
    return image_t.contiguous(), label_t
