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
    everywhere. With ``pseudo`` (True for the tiles of pseudo-labelled segments) and ``pseudo_share``, that share of
    each epoch's draws comes from those tiles and the rest from labelled ones, each part balanced by ``ink_ratio``.
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
        pseudo: np.ndarray | None = None,
        pseudo_share: float | None = None,
    ) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed)
        check_ink_ratio(ink_ratio)
        own = np.arange(len(dataset))[rank::num_replicas]
        if len(own) == 0:
            raise ValueError(f"the training split has {len(dataset)} tiles, fewer than the {num_replicas} processes")
        has_ink = np.asarray(dataset.tiles.has_ink)
        self.ink, self.plain, self.own = own[has_ink[own]], own[~has_ink[own]], own
        self.ink_ratio = ink_ratio
        self.pseudo_share = pseudo_share
        self.pools: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []  # (all, ink, plain): labelled, pseudo
        if pseudo is not None and pseudo_share is not None:
            flags = np.asarray(pseudo, dtype=bool)
            for part in (own[~flags[own]], own[flags[own]]):
                self.pools.append((part, part[has_ink[part]], part[~has_ink[part]]))
            if any(len(pool[0]) == 0 for pool in self.pools):  # one source only on this rank: share meaningless
                self.pools = []
        self.num_samples = max(1, samples_per_epoch // num_replicas)
        self.total_size = self.num_samples * num_replicas

    def __iter__(self) -> Iterator[int]:
        rng = np.random.default_rng([self.seed, self.epoch, self.rank])
        n = self.num_samples
        if not self.pools:
            return iter(self._balanced(self.own, self.ink, self.plain, n, rng).tolist())
        n_pseudo = int(rng.binomial(n, self.pseudo_share))
        (real, real_ink, real_plain), (pseudo, pseudo_ink, pseudo_plain) = self.pools
        chosen = np.concatenate(
            [
                self._balanced(real, real_ink, real_plain, n - n_pseudo, rng),
                self._balanced(pseudo, pseudo_ink, pseudo_plain, n_pseudo, rng),
            ]
        )
        rng.shuffle(chosen)
        return iter(chosen.tolist())

    def _balanced(
        self, pool: np.ndarray, ink: np.ndarray, plain: np.ndarray, n: int, rng: np.random.Generator
    ) -> np.ndarray:
        """``n`` tiles of ``pool``, ``ink_ratio`` of them (binomially) from its ``ink`` tiles."""
        if self.ink_ratio is None or len(ink) == 0 or len(plain) == 0:
            return _draw(pool, n, rng)
        n_ink = int(rng.binomial(n, self.ink_ratio))
        chosen = np.concatenate([_draw(ink, n_ink, rng), _draw(plain, n - n_ink, rng)])
        rng.shuffle(chosen)
        return chosen

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
