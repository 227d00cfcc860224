"""The Dataset that cuts tiles out of memory-mapped fragments: one window, its labels and valid mask per item.

Kept apart from the samplers (``datamodules/samplers.py``), which choose the indices: this file only reads
pixels, so a change to what an item holds touches nothing about which tiles are drawn.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from datamodules.augment.transforms import TileTransform, normalise
from datamodules.reading.fragment import Fragment
from datamodules.tiling import SCOPE_INSIDE, SCOPE_OUTSIDE, TileSet, jitter_windows
from utils.layout import to_channels_first


class TileDataset(Dataset):
    """Tiles ``volume[z, y:y+T, x:x+T]`` of a tile set, with their labels and valid masks.

    Args:
        fragments: every fragment the tile set's fragment indices refer to.
        tiles: the windows.
        tile_size: ``T``.
        transform: turns the raw window into the model's input (normalises; augments in training).
        depth_margin: extra slices read on each side of ``[z_start, z_end)`` for the transform's random depth shift;
            fewer (the same on both sides) where the window is closer than that to an end of the volume.
        jitter: the window moves by up to ±jitter px each time it is drawn (training only).
        with_labels: include ``label`` (False for prediction).
        soft_labels: labels are grey levels / 255 where the fragment's labels are grey (binary ones stay 0/1): for
            every fragment, or per fragment (a list, in the order of ``fragments``).
        loss_weights: each fragment's loss weight (a list in the order of ``fragments``): items then carry it as
            ``weight`` (a pseudo-labelled segment's pixels count less than labelled ones); None: no ``weight``.
    """

    def __init__(
        self,
        fragments: Sequence[Fragment],
        tiles: TileSet,
        tile_size: int,
        transform: TileTransform,
        *,
        depth_margin: int = 0,
        jitter: int = 0,
        with_labels: bool = True,
        soft_labels: bool | Sequence[bool] = False,
        loss_weights: Sequence[float] | None = None,
    ) -> None:
        self.fragments = list(fragments)
        self.tiles = tiles
        self.tile_size = tile_size
        self.transform = transform
        self.depth_margin = depth_margin
        self.jitter = jitter
        self.with_labels = with_labels
        count = len(self.fragments)
        self.soft_labels = [bool(soft_labels)] * count if isinstance(soft_labels, bool) else list(soft_labels)
        self.loss_weights = None if loss_weights is None else [float(w) for w in loss_weights]
        for name, values in (("soft_labels", self.soft_labels), ("loss_weights", self.loss_weights)):
            if values is not None and len(values) != count:
                raise ValueError(f"TileDataset {name}: {len(values)} values for {count} fragments")
        self.random = transform.train or jitter > 0

    def __len__(self) -> int:
        return len(self.tiles)

    def __getitem__(self, index: int) -> dict[str, object]:
        # Seeded from torch's generator, which Lightning's seed_everything(workers=True) seeds per worker
        # and per epoch: runs are reproducible and every epoch differs.
        seed = int(torch.randint(0, 2**62, ()).item()) if self.random else index
        rng = np.random.default_rng(seed)
        fragment_index = int(self.tiles.windows[index, 0])
        fragment = self.fragments[fragment_index]
        y, x = (
            int(v) for v in jitter_windows(self.tiles, np.array([index]), self.jitter if self.random else 0, rng)[0]
        )
        size = self.tile_size
        # The same number of extra slices on both sides, so the transform's random depth shift stays centred on
        # the nominal window where it touches either end of the volume (a one-sided margin biases the mean shift).
        margin = min(self.depth_margin, fragment.z_start, fragment.depth - fragment.z_end)
        z0, z1 = fragment.z_start - margin, fragment.z_end + margin
        valid = fragment.mask[y : y + size, x : x + size].astype(np.float32)
        ignore = fragment.ignore
        # Ignored, unknown or unsupervised pixels count neither in the loss nor in the metric; prediction still
        # covers them (the whole papyrus is predicted, trusted labels or not).
        if ignore is not None and self.with_labels:
            valid[ignore[y : y + size, x : x + size]] = 0.0
        scope = int(self.tiles.scope[index])
        if scope in (SCOPE_INSIDE, SCOPE_OUTSIDE):  # the validation mask's pixels validate and never train
            inside = fragment.validation[y : y + size, x : x + size]
            valid[~inside if scope == SCOPE_INSIDE else inside] = 0.0
        levels = fragment.label_levels if self.soft_labels[fragment_index] else None
        if levels is not None:
            label = levels[y : y + size, x : x + size].astype(np.float32) / 255.0
        elif fragment.labels is not None:
            label = fragment.labels[y : y + size, x : x + size].astype(np.float32)
        else:
            label = np.zeros((size, size), dtype=np.float32)
        transform = self.transform
        # The depth shift is drawn first, so only the window's slices are read.
        start = z0 + transform.depth_offset(z1 - z0, rng)
        if transform.augment:  # albumentations works on [H, W, C]: change layout around it
            image = fragment.read(start, start + transform.num_slices, y, x, size, size)
            image, label, valid = transform(image, label, valid, rng, fragment.intensity)
            image = to_channels_first(image)
        else:  # read straight into the model's [D, H, W]
            image = fragment.read(start, start + transform.num_slices, y, x, size, size, channels_last=False)
            image = normalise(image, fragment.intensity)
        item: dict[str, object] = {
            "image": torch.from_numpy(image),
            "valid": torch.from_numpy(np.ascontiguousarray(valid))[None],
            "fragment": fragment.id,
            "yx": torch.tensor([y, x], dtype=torch.int64),
        }
        if self.with_labels:
            item["label"] = torch.from_numpy(np.ascontiguousarray(label))[None]
        if self.loss_weights is not None:
            item["weight"] = torch.tensor(self.loss_weights[fragment_index], dtype=torch.float32)
        return item
