"""Loader throughput per core: tiles per second one process turns out, the project's ways against the peers'.

Every rate is measured in this one process with one thread for torch and OpenCV, on the same uint16 fragment and
tile size, after a warm-up, so the rows are comparable per core:

* ``project, albumentations``: the training Dataset's ``__getitem__`` with the default augmentation on the CPU;
* ``project, read + normalise``: the same with ``augment.backend: torch`` (what the workers do when the batch is
  augmented on the GPU): the window's slices read from the memory maps, depth shift drawn, normalised;
* ``project, torch batch augmentation (this CPU)``: the torch backend's per-batch transforms, run here on the
  CPU, per tile (on a GPU they run on the device instead; see docs/BENCHMARKS.md);
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


def _dataset(data_dir: Path, z_start: int, z_end: int, tile: int, backend: str):
    from datamodules.augment.transforms import AugmentConfig
    from datamodules.ink_datamodule import InkDataModule
    from datamodules.settings import LoaderConfig, SplitConfig, TileConfig, WindowConfig

    dm = InkDataModule(
        data_dir=str(data_dir),
        splits=SplitConfig(val_fold=None),
        window=WindowConfig(z_start=z_start, z_end=z_end),
        tiles=TileConfig(tile_size=tile),
        loader=LoaderConfig(num_workers=0),
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
    steps: dict[str, Callable[[int], int]] = {}
    for backend, name in (("albumentations", "project, albumentations"), ("torch", "project, read + normalise")):
        dataset = _dataset(data_dir, z_start, z_end, tile, backend)
        order = np.random.default_rng(0).integers(0, len(dataset), 4 * (warmup + tiles))

        def item(i: int, dataset=dataset, order=order) -> int:
            dataset[int(order[i % len(order)])]
            return 1

        steps[name] = item

    from datamodules.augment.batch_augment import augment_batch
    from datamodules.augment.transforms import AugmentConfig

    config = AugmentConfig(backend="torch")
    image = torch.rand(batch, z_end - z_start, tile, tile)
    label = (torch.rand(batch, 1, tile, tile) > 0.7).float()
    valid = torch.ones_like(label)

    def batch_augment(i: int) -> int:
        augment_batch(image, label, valid, config)
        return batch

    steps["project, torch batch augmentation (this CPU)"] = batch_augment

    frag = load_fragment(fragment_dir, z_start, z_end)
    windows = _peer_windows(frag.shape, tile, seed=0)
    aug = build_augmentation(tile, seed=0)

    def peers(i: int) -> int:
        picks = np.arange(i * batch, (i + 1) * batch) % len(windows)
        make_batch([frag], windows, picks, tile, aug)
        return batch

    steps["peers, in RAM"] = peers
    return _interleaved_rates(steps, warmup, tiles)


def _interleaved_rates(
    steps: dict[str, Callable[[int], int]], warmup: int, tiles: int, rounds: int = 4
) -> dict[str, float]:
    """Tiles per second of each way, timed in ``rounds`` alternating blocks (the machine's speed drifts; ways
    timed one after the other would see different machines); the slow torch-on-CPU way gets fewer tiles."""
    made = dict.fromkeys(steps, 0)
    spent = dict.fromkeys(steps, 0.0)
    calls = dict.fromkeys(steps, 0)
    for name, step in steps.items():
        for _ in range(max(1, warmup // 8)):
            calls[name] += 1
            step(calls[name])
    for _ in range(rounds):
        for name, step in steps.items():
            quota = tiles // rounds // (8 if "torch batch" in name else 1)
            count, started = 0, time.perf_counter()
            while count < max(1, quota):
                calls[name] += 1
                count += step(calls[name])
            spent[name] += time.perf_counter() - started
            made[name] += count
    return {name: made[name] / spent[name] for name in steps}


def _peer_windows(shape: tuple[int, int], tile: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    count = 4096
    ys = rng.integers(0, shape[0] - tile + 1, count)
    xs = rng.integers(0, shape[1] - tile + 1, count)
    return np.stack([np.zeros(count, dtype=np.int64), ys, xs], axis=1)
