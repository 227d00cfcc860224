"""DataLoader settings: worker count from the CPUs available, pinned memory on CUDA, workers kept alive.

Defaults follow what a GPU host needs: one worker process per CPU the process may use, shared between the
processes of one machine (DDP starts one per device), at most 8 each; workers kept across epochs
(``persistent_workers``) so a validation does not restart them and re-open every fragment; batches pinned when
they go to a CUDA device, so the copy can overlap compute.
"""

from __future__ import annotations

import os

from torch.utils.data import DataLoader, Dataset, Sampler

from utils.checks import check_int

__all__ = ["MAX_DEFAULT_WORKERS", "default_workers", "make_loader"]

MAX_DEFAULT_WORKERS = 8


def available_cpus() -> int:
    """CPUs this process may run on (its affinity mask where the platform has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def default_workers(processes_per_machine: int = 1) -> int:
    """Worker processes per loader: the CPUs left after one per training process, split between them, <= 8."""
    check_int("processes_per_machine", processes_per_machine, minimum=1)
    spare = available_cpus() - processes_per_machine
    return max(0, min(MAX_DEFAULT_WORKERS, spare // processes_per_machine))


def make_loader(
    dataset: Dataset,
    sampler: Sampler,
    batch_size: int,
    *,
    num_workers: int,
    pin_memory: bool,
    persistent_workers: bool,
    prefetch_factor: int,
) -> DataLoader:
    """A DataLoader over ``sampler``; worker-only settings are passed only when there are workers."""
    extra = {}
    if num_workers > 0:
        extra = {"persistent_workers": persistent_workers, "prefetch_factor": prefetch_factor}
    return DataLoader(
        dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers, pin_memory=pin_memory, **extra
    )
