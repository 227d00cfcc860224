"""Checkpoints written under a temporary name and renamed, so a crash never leaves a half-written one."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO

from callbacks.atomic import atomic_path


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` whose files appear complete or not at all (local paths)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} does not take storage_options")
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(target) as tmp:
            torch.save(checkpoint, tmp)
