"""A U-Net decoder fusing the encoder's stage features, deep to shallow."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def conv_bn_relu(cin: int, cout: int) -> nn.Sequential:
    """3×3 conv, batch norm, ReLU."""
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


def default_decoder_channels(encoder_channels: Sequence[int]) -> list[int]:
    """One width per decoder level, deepest first: the skip's channels, at most 256 halved per level, at least 16.

    Tapering keeps the fine levels (and the head at full resolution) cheap: they dominate the step time.
    """
    skips = list(encoder_channels[-2::-1]) or [encoder_channels[-1]]
    return [max(16, min(c, 256 >> i)) for i, c in enumerate(skips)]


class UNetDecoder(nn.Module):
    """Upsample, concatenate the skip, conv-bn-relu ×2; once per encoder stage below the deepest.

    Args:
        encoder_channels: channels of the encoder's feature maps, shallow to deep.
        decoder_channels: output channels of each level, deepest level first; one per encoder stage below
            the deepest (one level if the encoder returns a single stage). None picks `default_decoder_channels`.
        deep_supervision: add a 1×1 logit conv on every level but the last (`aux_logits`).

    Attributes:
        level_channels: output channels of each level, coarse to fine.
        out_channels: channels of the finest level (the head's input).
    """

    def __init__(
        self,
        encoder_channels: Sequence[int],
        decoder_channels: Sequence[int] | None = None,
        deep_supervision: bool = False,
    ) -> None:
        super().__init__()
        enc = [int(c) for c in encoder_channels]
        if not enc:
            raise ValueError("UNetDecoder needs at least one encoder stage")
        levels = max(len(enc) - 1, 1)
        channels = default_decoder_channels(enc) if decoder_channels is None else [int(c) for c in decoder_channels]
        if len(channels) != levels or any(c < 1 for c in channels):
            raise ValueError(
                f"decoder_channels {list(channels)}: need {levels} positive widths, one per decoder level "
                f"(the encoder returns {len(enc)} stages with channels {enc}); or leave it unset"
            )
        if deep_supervision and levels < 2:
            raise ValueError(
                "deep_supervision needs at least 2 decoder levels, i.e. an encoder returning at least 3 stages "
                f"(out_indices gives {len(enc)})"
            )
        self.blocks = nn.ModuleList()
        prev = enc[-1]
        skips = enc[-2::-1] if len(enc) > 1 else [0]
        for skip, out in zip(skips, channels, strict=True):
            self.blocks.append(nn.Sequential(conv_bn_relu(prev + skip, out), conv_bn_relu(out, out)))
            prev = out
        self.level_channels = channels
        self.out_channels = channels[-1]
        self.deep_supervision = deep_supervision
        self.aux_heads = nn.ModuleList(nn.Conv2d(c, 1, 1) for c in channels[:-1]) if deep_supervision else None

    def forward(self, features: list[Tensor]) -> list[Tensor]:
        """Fuses feature maps (shallow to deep) into decoder levels, coarse to fine; the last is the finest."""
        x = features[-1]
        skips = features[-2::-1] if len(features) > 1 else [None]
        levels = []
        for block, skip in zip(self.blocks, skips, strict=True):
            if skip is not None:
                if x.shape[-2:] != skip.shape[-2:]:
                    x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
                x = torch.cat([x, skip], dim=1)
            x = block(x)
            levels.append(x)
        return levels

    def aux_logits(self, levels: list[Tensor]) -> list[Tensor]:
        """Logits [B, 1, h, w] of every level but the last (empty without deep supervision)."""
        if self.aux_heads is None:
            return []
        return [head(level) for head, level in zip(self.aux_heads, levels[:-1], strict=True)]
