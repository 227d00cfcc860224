"""The tile samplers: evaluation tiles dealt once across ranks; training draws from distinct shares, by ink ratio."""

from __future__ import annotations

import numpy as np
import pytest
from torch.utils.data import Dataset

from datamodules.samplers import BalancedTileSampler, ShardedEvalSampler
from datamodules.tiling import TileSet


class _Tiles(Dataset):
    """What the samplers read of a tile dataset: its length and which tiles hold ink (about a third of them)."""

    def __init__(self, count: int = 150, seed: int = 0) -> None:
        has_ink = np.random.default_rng(seed).random(count) < 0.35
        self.tiles = TileSet(np.zeros((count, 3), np.int64), np.zeros((count, 4), np.int64), has_ink)

    def __len__(self) -> int:
        return len(self.tiles)

    def __getitem__(self, index: int) -> int:
        return index


def test_eval_tiles_are_dealt_once_across_ranks():
    dataset = _Tiles(37)
    for world in (1, 2, 3):
        shares = [list(ShardedEvalSampler(dataset, num_replicas=world, rank=r)) for r in range(world)]
        flat = sorted(i for share in shares for i in share)
        assert flat == list(range(len(dataset)))
        assert sum(len(ShardedEvalSampler(dataset, num_replicas=world, rank=r)) for r in range(world)) == len(dataset)


def test_training_ranks_draw_from_distinct_shares_balanced_by_ink_ratio():
    dataset = _Tiles()
    has_ink = dataset.tiles.has_ink
    assert has_ink.any() and (~has_ink).any()
    draws = []
    for rank in range(2):
        sampler = BalancedTileSampler(dataset, 400, 0.25, num_replicas=2, rank=rank, seed=0)
        sampler.set_epoch(0)
        drawn = list(sampler)
        assert len(drawn) == len(sampler) == 200
        draws.append(set(drawn))
        assert abs(has_ink[drawn].mean() - 0.25) < 0.1
    assert not draws[0] & draws[1]
    sampler = BalancedTileSampler(dataset, 64, 0.5, seed=0)
    sampler.set_epoch(0)
    first = list(sampler)
    sampler.set_epoch(1)
    assert list(sampler) != first
    sampler.set_epoch(0)
    assert list(sampler) == first
    with pytest.raises(ValueError, match="ink_ratio=1.0"):
        BalancedTileSampler(dataset, 64, 1.0)
