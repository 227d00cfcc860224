"""The samplers that decide which tiles each rank sees: balanced training draws and once-only evaluation.

They live apart from the Dataset because they choose indices and never read pixels. Both subclass
``DistributedSampler`` so Lightning uses them as they are under DDP instead of wrapping them: each rank draws
its training tiles from its own share, and evaluation tiles are dealt out so each is seen exactly once across
ranks (no padding duplicates, which would bias a stitched map).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

import numpy as np
from torch.utils.data import Dataset, DistributedSampler

if TYPE_CHECKING:
    from datamodules.tile_dataset import TileDataset


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
    """Deals evaluation tiles out to ranks in order: each tile exactly once across ranks, no padding.

    ``indices``: this rank's tiles, already chosen (whole-segment prediction plans its own share per rank).
    """

    def __init__(
        self, dataset: Dataset, *, num_replicas: int = 1, rank: int = 0, indices: Sequence[int] | None = None
    ) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=False)
        if indices is None:
            self.indices = list(range(rank, len(dataset), num_replicas))
        else:
            self.indices = [int(i) for i in indices]
        self.num_samples = len(self.indices)
        self.total_size = len(dataset)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return self.num_samples
