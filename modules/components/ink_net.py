"""InkNet: encoder → decoder → head; `NetConfig`, its settings (``--model.net.*``); `build_net`, which assembles it.

The settings are described and checked once, in `NetConfig`: the LightningModule, the CLI and `build_net` all take it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from modules.components.decoder import UNetDecoder
from modules.components.depth_pool import check_depth_pool
from modules.components.encoders2d import TimmEncoder2d
from modules.components.encoders3d import ENCODERS_3D, build_encoder3d
from modules.components.head import SegmentationHead, check_output_stride
from modules.components.stage_encoder import StageEncoder

ENCODER_KINDS = ("auto", "2d", "3d")


class InkNet(nn.Module):
    """Image [B, D, T, T] → ink logits [B, 1, T, T].

    `forward` always returns the main logits, so Grad-CAM and inference can treat the net as a function;
    `forward_with_aux` also returns the deep-supervision logits for the training loss.

    Args:
        encoder: a `StageEncoder` returning 2-D stage features.
        decoder: a `UNetDecoder` over those features.
        head: a `SegmentationHead` on the decoder's finest level.
    """

    def __init__(self, encoder: StageEncoder, decoder: UNetDecoder, head: SegmentationHead) -> None:
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder
        self.head = head

    def _check(self, image: Tensor) -> None:
        if image.ndim != 4:
            raise ValueError(f"InkNet expects an image [B, D, T, T], got shape {list(image.shape)}")

    def forward(self, image: Tensor) -> Tensor:
        """Ink logits [B, 1, T, T] of an image [B, D, T, T]."""
        self._check(image)
        levels = self.decoder(self.encoder(image))
        return self.head(levels[-1], tuple(image.shape[-2:]))

    def forward_with_aux(self, image: Tensor) -> dict[str, Tensor | list[Tensor]]:
        """``{"logits": [B, 1, T, T], "aux": [[B, 1, T, T], ...]}``; ``aux`` is empty without deep supervision.

        Auxiliary logits come from the coarser decoder levels, upsampled bilinearly to the tile.
        """
        self._check(image)
        size = tuple(image.shape[-2:])
        levels = self.decoder(self.encoder(image))
        aux = [
            F.interpolate(a, size=size, mode="bilinear", align_corners=False) for a in self.decoder.aux_logits(levels)
        ]
        return {"logits": self.head(levels[-1], size), "aux": aux}


def resolve_encoder_kind(encoder: str, encoder_kind: str = "auto") -> str:
    """``2d`` or ``3d`` for `encoder`; ``auto`` infers it from the name (3-D: r3d_18, mc3_18, r2plus1d_18, tiny3d)."""
    if encoder_kind not in ENCODER_KINDS:
        raise ValueError(f"encoder_kind must be one of {list(ENCODER_KINDS)}, got {encoder_kind!r}")
    if encoder_kind == "auto":
        return "3d" if encoder in ENCODERS_3D else "2d"
    if encoder_kind == "3d" and encoder not in ENCODERS_3D:
        raise ValueError(f"encoder_kind '3d' but encoder {encoder!r} is not a 3-D encoder; choose {list(ENCODERS_3D)}")
    return encoder_kind


@dataclass
class NetConfig:
    """The network's settings (``--model.net.*``), checked when built; `build_net` turns them into an `InkNet`.

    Attributes:
        encoder: A timm model name (2.5-D: slices as channels) or one of ``r3d_18``, ``mc3_18``, ``r2plus1d_18``,
            ``tiny3d`` (3-D: the slice stack as a volume).
        encoder_kind: ``auto`` (from the name), ``2d`` or ``3d``.
        out_indices: Encoder stages the decoder fuses; None: all (2-D), (1, 2, 3, 4) (video ResNets).
        depth_pool: ``mean``, ``max`` or ``attention``: how each 3-D stage is pooled over depth (unused by 2-D
            encoders).
        decoder_channels: Widths of the decoder levels, deepest first; None derives them from the encoder.
        deep_supervision: Also predict logits from the coarser decoder levels (`InkNet.forward_with_aux`); their
            mean loss is added with ``loss.aux_weight``.
        output_stride: Resolution of the logit map relative to the tile: 1, 2 or 4.
        pretrained: Download the encoder's published weights (opt-in; needs network access).
        pretrained_path: A local weights file for the encoder.
        encoder_kwargs: Extra arguments of 3-D encoders (``depth_strides``; ``widths`` for ``tiny3d``).
    """

    encoder: str = "resnet10t"
    encoder_kind: str = "auto"
    out_indices: list[int] | None = None
    depth_pool: str = "mean"
    decoder_channels: list[int] | None = None
    deep_supervision: bool = False
    output_stride: int = 1
    pretrained: bool = False
    pretrained_path: str | None = None
    encoder_kwargs: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        """Rejects settings that need no encoder to be built to be found wrong."""
        kind = resolve_encoder_kind(self.encoder, self.encoder_kind)
        check_depth_pool(self.depth_pool)
        check_output_stride(self.output_stride)
        if kind == "2d" and self.encoder_kwargs:
            raise ValueError(f"encoder_kwargs {self.encoder_kwargs} apply to 3-D encoders only, not {self.encoder!r}")


def build_net(num_slices: int, config: NetConfig | None = None) -> InkNet:
    """Builds an `InkNet`.

    Args:
        num_slices: Depth slices D per tile (the 2-D encoder's input channels).
        config: The network's settings; None: the defaults.

    Returns:
        The assembled `InkNet`.
    """
    config = NetConfig() if config is None else config
    if num_slices < 1:
        raise ValueError(f"num_slices must be >= 1, got {num_slices}")
    if resolve_encoder_kind(config.encoder, config.encoder_kind) == "3d":
        enc: StageEncoder = build_encoder3d(
            config.encoder,
            out_indices=config.out_indices,
            depth_pool=config.depth_pool,
            pretrained=config.pretrained,
            pretrained_path=config.pretrained_path,
            **(config.encoder_kwargs or {}),
        )
    else:
        enc = TimmEncoder2d(
            config.encoder,
            num_slices,
            out_indices=config.out_indices,
            pretrained=config.pretrained,
            pretrained_path=config.pretrained_path,
        )
    decoder = UNetDecoder(enc.feature_channels, config.decoder_channels, deep_supervision=config.deep_supervision)
    head = SegmentationHead(decoder.out_channels, output_stride=config.output_stride)
    return InkNet(enc, decoder, head)
