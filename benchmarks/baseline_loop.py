"""The benchmark's reference "plain loop": a Kaggle-style ink-detection baseline in plain PyTorch.

This is what a typical public notebook of the Vesuvius Challenge ink-detection competition did
("2.5d segmentation baseline"), rewritten as one self-contained function so the quality benchmark
can put the project's own recipe next to it on the same fragments, seeds and time budget:

- the chosen slice range of every fragment is read into RAM as uint8 HWC (``v >> 8`` for uint16);
- training tiles are all ``tile``×``tile`` windows at stride ``tile // 2`` whose centre lies in the
  mask, drawn uniformly with replacement; no validation while training;
- a U-Net with a timm ``resnet18`` encoder and a segmentation_models_pytorch-style decoder;
- loss 0.5 × BCE-with-logits + 0.5 × soft Dice, AdamW, cosine learning-rate decay;
- albumentations augmentation on uint8 images, then plain ``/ 255`` (no per-slice normalisation);
- prediction by overlapping tiles, sigmoid probabilities averaged where tiles overlap.

This file holds the model, the loss and the time-budgeted training and prediction; reading, windows,
augmentation and batches are `benchmarks.baseline_data`. Both deliberately import nothing from the project
(no Lightning, no ``modules/``, no ``datamodules/``), so a change to the project cannot silently change the
yardstick.

The run is time-budgeted: the cosine schedule's progress is ``elapsed / budget_s`` (wall clock),
not a step count, so the learning rate reaches its floor exactly when the budget is spent
whatever the machine's speed. Estimating the step count from the first steps would be
thrown off by warm-up effects (allocator, oneDNN kernel selection, other load on the machine).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import timm
import torch
import torch.nn.functional as F
from torch import nn

from benchmarks.baseline_data import Fragment, build_augmentation, grid_starts, load_fragment, make_batch, train_windows

__all__ = ["UNet", "bce_dice_loss", "train_and_predict"]

_MIN_LR = 1e-6  # cosine floor, as the notebooks' CosineAnnealingLR(eta_min=1e-6 .. 1e-7)
_LOSS_TAIL = 50  # "final" training loss: mean over this many last steps


# -------------------------------------------------------------------------------------------- model


class Conv3x3BNReLU(nn.Sequential):
    """3×3 convolution (no bias), batch norm, ReLU: smp's ``Conv2dReLU`` with ``use_batchnorm=True``."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(
            nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )


class DecoderBlock(nn.Module):
    """Upsample ×2 (nearest), concatenate the skip (if any), then two 3×3 conv-BN-ReLU."""

    def __init__(self, in_channels: int, skip_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv1 = Conv3x3BNReLU(in_channels + skip_channels, out_channels)
        self.conv2 = Conv3x3BNReLU(out_channels, out_channels)

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        """Decodes one level."""
        x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        if skip is not None:
            x = torch.cat([x, skip], dim=1)
        return self.conv2(self.conv1(x))


class UNet(nn.Module):
    """U-Net with a timm encoder and the decoder segmentation_models_pytorch builds for ``smp.Unet``.

    The encoder's five features (1/2 … 1/32) feed the decoder deepest first; the 1/2 stem feature
    is the last skip and the input resolution has none. The head is a 3×3 convolution to one logit.

    Args:
        in_chans: Number of input slices.
        encoder: timm model name.
        decoder_channels: Output channels of the five decoder blocks.
    """

    def __init__(
        self,
        in_chans: int = 16,
        encoder: str = "resnet18",
        decoder_channels: Sequence[int] = (256, 128, 64, 32, 16),
    ) -> None:
        super().__init__()
        self.encoder = timm.create_model(encoder, features_only=True, in_chans=in_chans, pretrained=False)
        enc_channels = list(self.encoder.feature_info.channels())  # [64, 64, 128, 256, 512] for resnet18
        if len(enc_channels) != len(decoder_channels):
            raise ValueError(f"{encoder} gives {len(enc_channels)} features, decoder has {len(decoder_channels)}")
        skips = enc_channels[::-1][1:] + [0]  # deepest is the decoder's input; the input itself has no skip
        ins = [enc_channels[-1], *decoder_channels[:-1]]
        self.decoder = nn.ModuleList(DecoderBlock(i, s, o) for i, s, o in zip(ins, skips, decoder_channels))
        self.head = nn.Conv2d(decoder_channels[-1], 1, kernel_size=3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Maps [B, D, H, W] images (H, W multiples of 32) to [B, 1, H, W] logits."""
        features = self.encoder(x)[::-1]
        y = features[0]
        for i, block in enumerate(self.decoder):
            y = block(y, features[i + 1] if i + 1 < len(features) else None)
        return self.head(y)


# --------------------------------------------------------------------------------------------- loss


def bce_dice_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """0.5 × BCE-with-logits + 0.5 × soft Dice over the whole batch, as smp's losses compute them.

    Dice follows ``smp.losses.DiceLoss(mode="binary")``: sums over batch and pixels, no smoothing,
    and zero when the batch holds no positive pixel.

    Args:
        logits: [B, 1, H, W] raw scores.
        target: [B, 1, H, W] 0/1 floats.

    Returns:
        The scalar loss.
    """
    bce = F.binary_cross_entropy_with_logits(logits, target)
    prob = logits.sigmoid()
    inter = (prob * target).sum()
    card = (prob + target).sum()
    dice = 1.0 - (2.0 * inter / card.clamp_min(1e-7))
    dice = dice * (target.sum() > 0).float()
    return 0.5 * bce + 0.5 * dice


# ------------------------------------------------------------------------------------ train/predict


@torch.no_grad()
def _predict(model: UNet, frag: Fragment, tile: int, stride: int, batch_size: int) -> np.ndarray:
    """Sigmoid probabilities of one fragment, the plain mean over overlapping windows, float32 [H, W].

    Windows with no mask pixel are skipped; pixels no window covers stay 0.
    """
    h, w = frag.shape
    image = frag.image
    ph, pw = max(h, tile), max(w, tile)
    if (ph, pw) != (h, w):  # fragment smaller than a tile: pad, as the notebooks padded
        image = np.pad(image, ((0, ph - h), (0, pw - w), (0, 0)))
    mask = np.zeros((ph, pw), dtype=bool)
    mask[:h, :w] = frag.mask
    corners = [
        (y, x)
        for y in grid_starts(ph, tile, stride)
        for x in grid_starts(pw, tile, stride)
        if mask[y : y + tile, x : x + tile].any()
    ]
    total = np.zeros((ph, pw), dtype=np.float32)
    count = np.zeros((ph, pw), dtype=np.float32)
    for i in range(0, len(corners), batch_size):
        chunk = corners[i : i + batch_size]
        batch = np.stack([image[y : y + tile, x : x + tile] for y, x in chunk])
        x_t = torch.from_numpy(batch).permute(0, 3, 1, 2).float().div_(255.0).contiguous()
        prob = model(x_t).sigmoid()[:, 0].numpy()
        for (y, x), p in zip(chunk, prob):
            total[y : y + tile, x : x + tile] += p
            count[y : y + tile, x : x + tile] += 1.0
    out = np.divide(total, count, out=np.zeros_like(total), where=count > 0)
    return out[:h, :w].astype(np.float32, copy=False)


def train_and_predict(
    data_dir: Path,
    train_ids: Sequence[str],
    predict_ids: Sequence[str],
    *,
    seed: int,
    budget_s: float,
    z_start: int = 22,
    z_end: int = 38,
    tile: int = 64,
    batch_size: int = 16,
    lr: float = 1e-3,
    threads: int | None = None,
    log: Callable[[str], None] | None = None,
    info: dict[str, float] | None = None,
) -> dict[str, dict[str, np.ndarray]]:
    """Trains the baseline on ``train_ids`` for ``budget_s`` seconds, then predicts ``predict_ids``.

    The budget covers training steps only (loading and prediction are not counted): no new step
    starts once ``time.monotonic()`` has passed it, so at least one step always runs. The
    learning rate follows a cosine from ``lr`` to 1e-6 with progress ``elapsed / budget_s``.

    Args:
        data_dir: Folder holding one sub-folder per fragment.
        train_ids: Fragments to train on (each needs ``inklabels.png``).
        predict_ids: Fragments to predict (may overlap ``train_ids``; labels optional).
        seed: Seeds torch, the numpy Generator drawing windows, and the albumentations Compose.
        budget_s: Training wall-clock budget in seconds.
        z_start: First slice read.
        z_end: One past the last slice read (the model sees ``z_end - z_start`` channels).
        tile: Tile size (a multiple of 32); the window stride is ``tile // 2``.
        batch_size: Training (and prediction) batch size.
        lr: Peak AdamW learning rate (weight decay 1e-2).
        threads: When given, ``torch.set_num_threads`` for the call (restored afterwards).
        log: Called with one-line progress messages (start, every ~10 % of the budget, end).
        info: When given, filled with ``steps``, ``train_s``, ``steps_per_s``, ``final_loss``
            (mean of the last 50 steps' losses), ``mean_loss`` (all steps) and ``train_windows``.

    Returns:
        ``{fragment_id: {"prob": float32 [H, W], "valid": bool [H, W], "label": bool [H, W]}}``
        for every id in ``predict_ids``; ``"label"`` is present only when ``inklabels.png`` is.

    Raises:
        ValueError: On an empty ``train_ids``, a training fragment without labels, a tile that
            is not a multiple of 32, or no training window inside any mask.
    """
    if not train_ids:
        raise ValueError("train_ids is empty")
    if tile % 32 != 0:
        raise ValueError(f"tile must be a multiple of 32 for a 5-level U-Net, got {tile}")
    say = log or (lambda _msg: None)
    data_dir = Path(data_dir)
    stride = tile // 2
    old_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        torch.manual_seed(seed)
        rng = np.random.default_rng(seed)
        aug = build_augmentation(tile, seed)

        loaded: dict[str, Fragment] = {}

        def get(fid: str) -> Fragment:
            if fid not in loaded:
                loaded[fid] = load_fragment(data_dir / fid, z_start, z_end)
            return loaded[fid]

        frags = [get(fid) for fid in train_ids]
        parts = []
        for i, frag in enumerate(frags):
            if frag.label is None:
                raise ValueError(f"training fragment {frag.fragment_id} has no inklabels.png")
            corners = train_windows(frag, tile, stride)
            parts.append(np.concatenate([np.full((len(corners), 1), i, dtype=np.int64), corners], axis=1))
        windows = np.concatenate(parts)
        if len(windows) == 0:
            raise ValueError(f"no {tile}x{tile} training window has its centre inside a mask")

        model = UNet(in_chans=z_end - z_start)
        optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-2)
        say(f"baseline: {len(frags)} train fragments, {len(windows)} windows, budget {budget_s:.0f}s")

        model.train()
        losses: list[float] = []
        t0 = time.monotonic()
        next_report = 0.1
        while True:
            elapsed = time.monotonic() - t0
            if losses and elapsed >= budget_s:
                break
            progress = min(elapsed / budget_s, 1.0) if budget_s > 0 else 1.0
            for group in optimizer.param_groups:
                group["lr"] = _MIN_LR + 0.5 * (lr - _MIN_LR) * (1.0 + math.cos(math.pi * progress))
            image, label = make_batch(frags, windows, rng.integers(0, len(windows), size=batch_size), tile, aug)
            loss = bce_dice_loss(model(image), label)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(float(loss.detach()))
            if progress >= next_report:
                recent = float(np.mean(losses[-_LOSS_TAIL:]))
                cur_lr = optimizer.param_groups[0]["lr"]
                say(f"baseline: step {len(losses)} {elapsed:.0f}s loss {recent:.4f} lr {cur_lr:.2e}")
                next_report += 0.1
        train_s = time.monotonic() - t0
        stats = {
            "steps": float(len(losses)),
            "train_s": train_s,
            "steps_per_s": len(losses) / train_s if train_s > 0 else 0.0,
            "final_loss": float(np.mean(losses[-_LOSS_TAIL:])),
            "mean_loss": float(np.mean(losses)),
            "train_windows": float(len(windows)),
        }
        say(
            f"baseline: trained {len(losses)} steps in {train_s:.1f}s ({stats['steps_per_s']:.2f} steps/s), "
            f"final loss {stats['final_loss']:.4f}"
        )
        if info is not None:
            info.update(stats)

        model.eval()
        result: dict[str, dict[str, np.ndarray]] = {}
        for fid in predict_ids:
            frag = get(fid)
            entry = {"prob": _predict(model, frag, tile, stride, batch_size), "valid": frag.mask.copy()}
            if frag.label is not None:
                entry["label"] = frag.label.copy()
            result[fid] = entry
        return result
    finally:
        torch.set_num_threads(old_threads)
