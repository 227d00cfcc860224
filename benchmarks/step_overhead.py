"""What Lightning costs per training step: the project's `InkModule` under a `Trainer` against a plain PyTorch loop.

Both train the same network (same initial weights) with the same loss on the same batches, already in memory, so
the difference is the framework: hooks, logging, the optimizer closure, the progress of the loop. Reported as
seconds per step and the ratio Lightning / plain (target at most 1.05). The model's device is a GPU when one is
visible, else the CPU.
"""

from __future__ import annotations

import copy
import time

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from modules.components.ink_net import NetConfig
from modules.ink_module import InkModule
from modules.losses import InkLoss

__all__ = ["step_benchmark"]


class _Timer(pl.Callback):
    """Wall time of the steps after ``warmup``, synchronising the device at both ends."""

    def __init__(self, warmup: int) -> None:
        self.warmup, self.started, self.seconds = warmup, 0.0, 0.0

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: object, i: int) -> None:
        if i == self.warmup:
            _sync()
            self.started = time.perf_counter()

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        _sync()
        self.seconds = time.perf_counter() - self.started


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _batches(count: int, batch: int, depth: int, tile: int) -> list[dict[str, torch.Tensor]]:
    gen = torch.Generator().manual_seed(0)
    return [
        {
            "image": torch.rand(batch, depth, tile, tile, generator=gen),
            "label": (torch.rand(batch, 1, tile, tile, generator=gen) > 0.8).float(),
            "valid": torch.ones(batch, 1, tile, tile),
        }
        for _ in range(count)
    ]


def _plain(
    module: InkModule, batches: list[dict[str, torch.Tensor]], warmup: int, device: torch.device, compiled: bool
) -> float:
    net = copy.deepcopy(module.net).to(device).train()  # the module's own weights stay as they started
    forward = torch.compile(net) if compiled else net
    loss_fn = InkLoss(module.loss_config)
    optimizer = torch.optim.AdamW(net.parameters(), lr=module.optim_config.lr)
    started = 0.0
    for i, batch in enumerate(batches):
        if i == warmup:
            _sync()
            started = time.perf_counter()
        image, label, valid = (batch[k].to(device, non_blocking=True) for k in ("image", "label", "valid"))
        loss = loss_fn(forward(image), label, valid)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    _sync()
    return (time.perf_counter() - started) / (len(batches) - warmup)


def _lightning(module: InkModule, batches: list[dict[str, torch.Tensor]], warmup: int, accelerator: str) -> float:
    timer = _Timer(warmup)
    trainer = pl.Trainer(
        accelerator=accelerator,
        devices=1,
        max_steps=len(batches),
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        callbacks=[timer],
    )
    trainer.fit(module, DataLoader(batches, batch_size=None))
    return timer.seconds / (len(batches) - warmup)


def step_benchmark(*, batch: int, tile: int, depth: int, compile: bool = False, steps: int = 30) -> dict[str, float]:
    """Seconds per step of the plain loop and of Lightning (and with ``compile`` both compiled); prints a table."""
    accelerator = "gpu" if torch.cuda.is_available() else "cpu"
    device = torch.device("cuda" if accelerator == "gpu" else "cpu")
    warmup = max(3, steps // 6)
    batches = _batches(steps, batch, depth, tile)
    results: dict[str, float] = {}
    for compiled in (False, True) if compile else (False,):
        torch.manual_seed(0)
        module = InkModule(num_slices=depth, net=NetConfig(), compile=compiled)
        tag = " (compiled)" if compiled else ""
        results[f"plain{tag}"] = _plain(module, batches, warmup, device, compiled)
        results[f"lightning{tag}"] = _lightning(module, batches, warmup, accelerator)
    print(f"\nTraining step, {accelerator}: batch {batch}, {depth} slices, tile {tile}; {steps - warmup} timed steps")
    print("| loop | s/step | Lightning / plain |\n|---|---|---|")
    for compiled in ("", " (compiled)") if compile else ("",):
        plain, light = results[f"plain{compiled}"], results[f"lightning{compiled}"]
        print(f"| plain PyTorch{compiled} | {plain:.4f} | |")
        print(f"| Lightning{compiled} | {light:.4f} | {light / plain:.3f} |")
        results[f"ratio{compiled}"] = light / plain
    return results
