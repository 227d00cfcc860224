"""Plain nn.Modules of the ink-detection network: encoders, depth pooling, decoder, head, InkNet."""

from modules.components.decoder import UNetDecoder
from modules.components.depth_pool import DEPTH_POOLS, DepthPool
from modules.components.encoders2d import TimmEncoder2d
from modules.components.encoders3d import ENCODERS_3D, Tiny3dEncoder, VideoResNetEncoder3d, build_encoder3d
from modules.components.head import OUTPUT_STRIDES, SegmentationHead
from modules.components.ink_net import InkNet, NetConfig, build_net
from modules.components.stage_encoder import StageEncoder

__all__ = [
    "DEPTH_POOLS",
    "ENCODERS_3D",
    "OUTPUT_STRIDES",
    "DepthPool",
    "InkNet",
    "NetConfig",
    "SegmentationHead",
    "StageEncoder",
    "Tiny3dEncoder",
    "TimmEncoder2d",
    "UNetDecoder",
    "VideoResNetEncoder3d",
    "build_encoder3d",
    "build_net",
]
