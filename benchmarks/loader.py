"""Loader throughput per core: tiles per second one process turns out, the project's ways against the peers'.

Every rate is measured in this one process with one thread for torch and OpenCV, on the same uint16 fragment and
tile size, after a warm-up, so the rows are comparable per core:

* ``project, albumentations``: the training Dataset's ``__getitem__`` with the default augmentation on the CPU;
* ``project, read + normalise``: the same with ``augment.backend: torch`` (what the workers do when the batch is
  augmented on the GPU): the window's slices read from the memory maps, depth shift drawn, normalised;
* ``project, torch batch augmentation (this CPU)``: the torch backend's per-batch transforms, run here on the
  CPU, per tile (on a GPU they run on the device instead; see README);
* ``peers, in RAM``: the slice range read into RAM as uint8 first, tiles cut from it and augmented with the
  notebooks' albumentations pipeline (`benchmarks.baseline_data`), stacked into a float tensor.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import torch

from benchmarks.baseline_data import build_augmentation, load_fragment, make_batch

__all__ = ["loader_rates"]


def _rate(step: Callable[[int], int], warmup: int, count: int) -> float:
    """Tiles per second of ``step(i)`` (which returns how many tiles it made) after ``warmup`` calls."""
    for i in range(warmup):
        step(i)
    made, started = 0, time.perf_counter()
    i = warmup
    while made < count:
        made += step(i)
        i += 1
    return made / (time.perf_counter() - started)


def _dataset(data_dir: Path, z_start: int, z_end: int, tile: int, backend: str):
    from datamodules.ink_datamodule import InkDataModule
    from datamodules.transforms import AugmentConfig

    dm = InkDataModule(
        data_dir=str(data_dir),
        z_start=z_start,
        z_end=z_end,
        tile_size=tile,
        val_fold=None,
        num_workers=0,
        augment=AugmentConfig(backend=backend),
    )
    dm.setup("fit")
    return dm._dataset("train", training=True)


def loader_rates(
    data_dir: Path, fragment_dir: Path, *, z_start: int, z_end: int, tile: int, tiles: int, batch: int = 16
) -> dict[str, float]:
    """Tiles per second per core of each way (see the module docstring).

    Args:
        data_dir: A folder holding one fragment (the project's reader).
        fragment_dir: That fragment's own folder (the peers' reader).
        z_start, z_end: The slice window.
        tile: Tile edge.
        tiles: Tiles timed per way (after a warm-up of a tenth of that).
        batch: Batch size of the batch-wise ways.
    """
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    torch.manual_seed(0)
    warmup = max(8, tiles // 10)
    rates: dict[str, float] = {}
    for backend, name in (("albumentations", "project, albumentations"), ("torch", "project, read + normalise")):
        dataset = _dataset(data_dir, z_start, z_end, tile, backend)
        rng = np.random.default_rng(0)
        order = rng.integers(0, len(dataset), warmup + tiles)

        def item(i: int, dataset=dataset, order=order) -> int:
            dataset[int(order[i])]
            return 1

        rates[name] = _rate(item, warmup, tiles)

    from datamodules.batch_augment import augment_batch
    from datamodules.transforms import AugmentConfig

    config = AugmentConfig(backend="torch")
    image = torch.rand(batch, z_end - z_start, tile, tile)
    label = (torch.rand(batch, 1, tile, tile) > 0.7).float()
    valid = torch.ones_like(label)

    def batch_augment(i: int) -> int:
        augment_batch(image, label, valid, config)
        return batch

    rates["project, torch batch augmentation (this CPU)"] = _rate(batch_augment, 2, max(batch, tiles // 2))

    frag = load_fragment(fragment_dir, z_start, z_end)
    windows = _peer_windows(frag.shape, tile, seed=0)
    aug = build_augmentation(tile, seed=0)

    def peers(i: int) -> int:
        picks = np.arange(i * batch, (i + 1) * batch) % len(windows)
        make_batch([frag], windows, picks, tile, aug)
        return batch

    rates["peers, in RAM"] = _rate(peers, max(1, warmup // batch), tiles)
    return rates


def _peer_windows(shape: tuple[int, int], tile: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    count = 4096
    ys = rng.integers(0, shape[0] - tile + 1, count)
    xs = rng.integers(0, shape[1] - tile + 1, count)
    return np.stack([np.zeros(count, dtype=np.int64), ys, xs], axis=1)
