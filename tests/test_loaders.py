"""Loader settings: the worker count follows the CPUs available, worker-only settings reach the DataLoader, and
the data module pins memory only when asked or on CUDA."""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace

import pytest
from torch.utils.data import SequentialSampler

from datamodules import loaders
from datamodules.ink_datamodule import InkDataModule


@pytest.mark.parametrize(
    ("cpus", "processes", "expected"),
    [(1, 1, 0), (2, 1, 1), (16, 1, 8), (16, 2, 7), (16, 8, 1), (4, 8, 0), (64, 4, 8)],
)
def test_default_workers_share_the_spare_cpus(
    monkeypatch: pytest.MonkeyPatch, cpus: int, processes: int, expected: int
) -> None:
    monkeypatch.setattr(loaders, "available_cpus", lambda: cpus)
    assert loaders.default_workers(processes) == expected


def test_available_cpus_is_the_affinity_mask() -> None:
    assert 1 <= loaders.available_cpus() <= (os.cpu_count() or 1)


def test_worker_only_settings_are_passed_only_with_workers() -> None:
    data = list(range(8))
    with_workers = loaders.make_loader(
        data, SequentialSampler(data), 2, num_workers=1, pin_memory=False, persistent_workers=True, prefetch_factor=3
    )
    assert with_workers.persistent_workers and with_workers.prefetch_factor == 3
    assert [b.tolist() for b in with_workers] == [[0, 1], [2, 3], [4, 5], [6, 7]]
    none = loaders.make_loader(
        data, SequentialSampler(data), 2, num_workers=0, pin_memory=False, persistent_workers=True, prefetch_factor=3
    )
    assert none.num_workers == 0 and not none.persistent_workers and none.prefetch_factor is None


def test_datamodule_loader_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(loaders, "available_cpus", lambda: 6)
    dm = InkDataModule(data_dir=str(tmp_path), prefetch_factor=4)
    dm.trainer = SimpleNamespace(accelerator=object(), num_devices=2)  # two processes on this machine, no CUDA
    data = list(range(4))
    loader = dm._loader(data, SequentialSampler(data), 2)
    assert loader.num_workers == 2 and loader.prefetch_factor == 4 and loader.persistent_workers
    assert not loader.pin_memory
    dm = InkDataModule(data_dir=str(tmp_path), num_workers=0, pin_memory=True)
    loader = dm._loader(data, SequentialSampler(data), 2)
    assert loader.num_workers == 0 and loader.pin_memory


@pytest.mark.parametrize(("setting", "value"), [("num_workers", -1), ("prefetch_factor", 0)])
def test_bad_loader_settings_are_named(tmp_path: Path, setting: str, value: int) -> None:
    with pytest.raises(ValueError, match=setting):
        InkDataModule(data_dir=str(tmp_path), **{setting: value})
