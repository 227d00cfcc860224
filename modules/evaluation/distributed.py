"""Collectives of the evaluation path (summing counts, reducing large maps in chunks), safe without a process group.

CPU tensors under an NCCL-only process group travel through the current CUDA device.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

__all__ = ["all_reduce_chunked", "comm_device", "distributed_world"]


def distributed_world() -> tuple[int, int]:
    """``(rank, world_size)`` of the initialised process group; ``(0, 1)`` without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def comm_device(device: torch.device) -> torch.device:
    """Where a tensor living on `device` can take part in a collective of the current process group."""
    backend = str(dist.get_backend()).lower()
    if device.type == "cpu" and "nccl" in backend and "gloo" not in backend:
        return torch.device("cuda", torch.cuda.current_device())
    return device


def all_reduce_chunked(tensor: torch.Tensor, op: dist.ReduceOp, chunk_numel: int) -> None:
    """All-reduces a contiguous tensor in place, `chunk_numel` elements per collective; a no-op on one process."""
    if distributed_world()[1] == 1:
        return
    device = comm_device(tensor.device)
    flat = tensor.view(-1)  # contiguous, so chunks are contiguous views
    for start in range(0, flat.numel(), chunk_numel):
        part = flat[start : start + chunk_numel]
        if device != tensor.device:
            buf = part.to(device)
            dist.all_reduce(buf, op=op)
            part.copy_(buf)
        else:
            dist.all_reduce(part, op=op)


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """The element-wise sum of `tensor` over every rank (a new tensor; a copy on one process)."""
    out = tensor.clone()
    all_reduce_chunked(out, dist.ReduceOp.SUM, max(1, out.numel()))
    return out
