"""The Dataset that cuts tiles out of memory-mapped fragments, and the samplers that decide which tiles.

Both samplers subclass ``DistributedSampler`` so Lightning uses them as they are under DDP instead of
wrapping them: each rank draws its training tiles from its own share, and evaluation tiles are dealt out
so each is seen exactly once across ranks (no padding duplicates, which would bias a stitched map).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset, DistributedSampler

from datamodules.fragment import Fragment
from datamodules.tiling import TileSet, jitter_windows
from datamodules.transforms import TileTransform


class TileDataset(Dataset):
    """Tiles ``volume[z, y:y+T, x:x+T]`` of a tile set, with their labels and valid masks.

    Args:
        fragments: every fragment the tile set's fragment indices refer to.
        tiles: the windows.
        tile_size: ``T``.
        transform: turns the raw window into the model's input (normalises; augments in training).
        depth_margin: extra slices read on each side of ``[z_start, z_end)`` for the transform's random depth shift.
        jitter: the window moves by up to ±jitter px each time it is drawn (training only).
        with_labels: include ``label`` (False for prediction).
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
    ) -> None:
        self.fragments = list(fragments)
        self.tiles = tiles
        self.tile_size = tile_size
        self.transform = transform
        self.depth_margin = depth_margin
        self.jitter = jitter
        self.with_labels = with_labels
        self.random = transform.train or jitter > 0

    def __len__(self) -> int:
        return len(self.tiles)

    def __getitem__(self, index: int) -> dict[str, object]:
        # Seeded from torch's generator, which Lightning's seed_everything(workers=True) seeds per worker
        # and per epoch: runs are reproducible and every epoch differs.
        seed = int(torch.randint(0, 2**62, ()).item()) if self.random else index
        rng = np.random.default_rng(seed)
        fragment = self.fragments[int(self.tiles.windows[index, 0])]
        y, x = (
            int(v) for v in jitter_windows(self.tiles, np.array([index]), self.jitter if self.random else 0, rng)[0]
        )
        size = self.tile_size
        z0 = max(0, fragment.z_start - self.depth_margin)
        z1 = min(fragment.depth, fragment.z_end + self.depth_margin)
        image = fragment.read(z0, z1, y, x, size, size)
        valid = fragment.mask[y : y + size, x : x + size].astype(np.float32)
        ignore = fragment.ignore
        if ignore is not None:  # unknown pixels count neither in the loss nor in the metric
            valid[ignore[y : y + size, x : x + size]] = 0.0
        if fragment.labels is not None:
            label = fragment.labels[y : y + size, x : x + size].astype(np.float32)
        else:
            label = np.zeros((size, size), dtype=np.float32)
        image, label, valid = self.transform(image, label, valid, rng, fragment.intensity)
        item: dict[str, object] = {
            "image": torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))),
            "valid": torch.from_numpy(np.ascontiguousarray(valid))[None],
            "fragment": fragment.id,
            "yx": torch.tensor([y, x], dtype=torch.int64),
        }
        if self.with_labels:
            item["label"] = torch.from_numpy(np.ascontiguousarray(label))[None]
        return item


class BalancedTileSampler(DistributedSampler):
    """Draws ``samples_per_epoch`` training tiles per epoch, ``ink_ratio`` of them from tiles holding ink.

    Rank ``r`` of ``R`` draws only from candidates ``r, r+R, …``: ranks see distinct shares. ``ink_ratio``
    ``None`` samples tiles uniformly; it is never 1, since ink-only sampling trains a model that predicts ink
    everywhere.
    """

    def __init__(
        self,
        dataset: TileDataset,
        samples_per_epoch: int,
        ink_ratio: float | None,
        *,
        num_replicas: int = 1,
        rank: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed)
        check_ink_ratio(ink_ratio)
        own = np.arange(len(dataset))[rank::num_replicas]
        if len(own) == 0:
            raise ValueError(f"the training split has {len(dataset)} tiles, fewer than the {num_replicas} processes")
        has_ink = dataset.tiles.has_ink[own]
        self.ink, self.plain, self.own = own[has_ink], own[~has_ink], own
        self.ink_ratio = ink_ratio
        self.num_samples = max(1, samples_per_epoch // num_replicas)
        self.total_size = self.num_samples * num_replicas

    def __iter__(self) -> Iterator[int]:
        rng = np.random.default_rng([self.seed, self.epoch, self.rank])
        n = self.num_samples
        if self.ink_ratio is None or len(self.ink) == 0 or len(self.plain) == 0:
            chosen = _draw(self.own, n, rng)
        else:
            n_ink = int(rng.binomial(n, self.ink_ratio))
            chosen = np.concatenate([_draw(self.ink, n_ink, rng), _draw(self.plain, n - n_ink, rng)])
            rng.shuffle(chosen)
        return iter(chosen.tolist())

    def __len__(self) -> int:
        return self.num_samples


def check_ink_ratio(ink_ratio: float | None) -> None:
    """``ink_ratio`` must be None (uniform sampling) or in [0, 1): never 1."""
    if ink_ratio is not None and not 0.0 <= ink_ratio < 1.0:
        raise ValueError(
            f"ink_ratio={ink_ratio}: must be in [0, 1) or None "
            "(ink-only sampling makes a model that predicts ink everywhere)"
        )


def _draw(pool: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` items of ``pool``: without replacement while the pool lasts."""
    if n <= len(pool):
        return rng.choice(pool, size=n, replace=False)
    return rng.choice(pool, size=n, replace=True)


class ShardedEvalSampler(DistributedSampler):
    """Deals evaluation tiles out to ranks in order: each tile exactly once across ranks, no padding."""

    def __init__(self, dataset: Dataset, *, num_replicas: int = 1, rank: int = 0) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=False)
        self.indices = list(range(rank, len(dataset), num_replicas))
        self.num_samples = len(self.indices)
        self.total_size = len(dataset)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return self.num_samples
