"""The segmentation head: one ink logit map at `output_stride`, upsampled to the tile."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from modules.components.decoder import conv_bn_relu

OUTPUT_STRIDES = (1, 2, 4)


class SegmentationHead(nn.Module):
    """Resizes decoder features to tile/`output_stride`, predicts one logit map, upsamples it bilinearly.

    A coarser `output_stride` predicts smoother ink maps and costs less at full resolution (the winners
    predicted at 1/4 to 1/32 and upsampled).

    Args:
        in_channels: channels of the decoder's finest level.
        output_stride: 1, 2 or 4.
        mid_channels: width of the 3×3 conv before the logit conv (default: `in_channels`).
    """

    def __init__(self, in_channels: int, output_stride: int = 1, mid_channels: int | None = None) -> None:
        super().__init__()
        check_output_stride(output_stride)
        mid = mid_channels or in_channels
        self.output_stride = output_stride
        self.conv = conv_bn_relu(in_channels, mid)
        self.logit = nn.Conv2d(mid, 1, 1)

    def forward(self, x: Tensor, size: tuple[int, int]) -> Tensor:
        """Maps decoder features [B, C, h, w] to logits [B, 1, *size]."""
        height, width = size
        s = self.output_stride
        if height % s or width % s:
            raise ValueError(f"tile size {height}×{width} is not divisible by output_stride {s}")
        target = (height // s, width // s)
        if x.shape[-2] > target[0] or x.shape[-1] > target[1]:
            x = F.adaptive_avg_pool2d(x, target)
        elif tuple(x.shape[-2:]) != target:
            x = F.interpolate(x, size=target, mode="bilinear", align_corners=False)
        logits = self.logit(self.conv(x))
        if s > 1:
            logits = F.interpolate(logits, size=(height, width), mode="bilinear", align_corners=False)
        return logits


def check_output_stride(output_stride: int) -> None:
    """Raises ValueError unless `output_stride` is one of `OUTPUT_STRIDES`."""
    if output_stride not in OUTPUT_STRIDES:
        raise ValueError(f"output_stride must be one of {list(OUTPUT_STRIDES)}, got {output_stride!r}")
