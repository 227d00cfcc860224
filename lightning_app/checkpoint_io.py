"""Checkpoints written under a temporary name and renamed, and read back as data only."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO

from utils.atomic import atomic_path
from utils.checkpoints import load_checkpoint


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` whose files appear complete or not at all, and load weights-only (local paths).

    Lightning reads ``trainer.fit/validate/test/predict(ckpt_path=...)`` through this plugin: loading goes through
    `utils.checkpoints.load_checkpoint`, so a checkpoint holding code (a pickled ``__reduce__`` payload) is refused
    before anything in it runs.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} does not take storage_options")
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(target) as tmp:
            torch.save(checkpoint, tmp)

    def load_checkpoint(
        self,
        path: str | Path,
        map_location: Callable[..., Any] | None = lambda storage, loc: storage,
        weights_only: bool | None = None,
    ) -> dict[str, Any]:
        """Loads ``path`` with the weights-only unpickler and the project's allow-list.

        ``weights_only`` is accepted for Lightning's signature and ignored: ``weights_only=False`` (which
        ``Trainer.fit`` passes on from its own argument) would let the file run code, so it is never honoured.
        """
        return load_checkpoint(path, what="ckpt_path", map_location=map_location)
