"""Tiny encoder → decoder → head nets and a LightningModule holding one, shared by the Grad-CAM tests."""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import Tensor, nn

DEPTH, TILE = 8, 32


class Net(nn.Module):
    """The project's contract: encoder → decoder → head, image [B, D, T, T] → logits [B, 1, T, T]."""

    def __init__(self, encoder: nn.Module, decoder: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.encoder, self.decoder, self.head = encoder, decoder, head

    def forward(self, image: Tensor) -> Tensor:
        return self.head(self.decoder(self.encoder(image)))


def tiny_net2d(depth: int = DEPTH) -> Net:
    encoder = nn.Sequential(
        nn.Conv2d(depth, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3, stride=2, padding=1)
    )
    decoder = nn.Sequential(nn.ReLU(), nn.Dropout(0.2), nn.Upsample(scale_factor=2), nn.Conv2d(8, 8, 3, padding=1))
    return Net(encoder, decoder, nn.Conv2d(8, 1, 1))


class Encoder3d(nn.Module):
    """[B, D, H, W] → Conv3d stages on [B, 1, D, H, W] → mean over depth."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv3d(1, 4, 3, padding=1), nn.ReLU())
        self.stage1 = nn.Sequential(nn.Conv3d(4, 8, 3, stride=(2, 2, 2), padding=1), nn.ReLU())

    def forward(self, image: Tensor) -> Tensor:
        return self.stage1(self.stem(image.unsqueeze(1))).mean(dim=2)


def tiny_net3d() -> Net:
    decoder = nn.Sequential(nn.Upsample(scale_factor=2), nn.Conv2d(8, 4, 3, padding=1), nn.ReLU())
    return Net(Encoder3d(), decoder, nn.Conv2d(4, 1, 1))


class ToyModule(pl.LightningModule):
    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def _loss(self, batch: dict[str, Any]) -> Tensor:
        logits = self.net(batch["image"])
        loss = F.binary_cross_entropy_with_logits(logits, batch["label"], reduction="none")
        return (loss * batch["valid"]).sum() / batch["valid"].sum().clamp_min(1)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        return self._loss(batch)

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self.log("val/loss", self._loss(batch), batch_size=batch["image"].shape[0])

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.01)
