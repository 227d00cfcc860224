"""3-D encoders: convolutions over (depth, y, x), each stage pooled over depth to a 2-D map."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from torch import Tensor, nn
from torchvision.models import video

from modules.components.depth_pool import DepthPool, check_depth_pool
from modules.components.stage_encoder import StageEncoder, check_out_indices
from modules.components.weights import adapt_input_channels, load_local_weights

# name -> (torchvision builder, its weights enum); weights are only fetched when pretrained=True.
VIDEO_RESNETS: dict[str, tuple[Callable[..., video.VideoResNet], type]] = {
    "r3d_18": (video.r3d_18, video.R3D_18_Weights),
    "mc3_18": (video.mc3_18, video.MC3_18_Weights),
    "r2plus1d_18": (video.r2plus1d_18, video.R2Plus1D_18_Weights),
}
TINY3D = "tiny3d"
ENCODERS_3D = (*VIDEO_RESNETS, TINY3D)


def _check_depth_strides(depth_strides: Sequence[int], count: int, encoder: str) -> tuple[int, ...]:
    strides = tuple(int(s) for s in depth_strides)
    if len(strides) != count or any(s not in (1, 2) for s in strides):
        raise ValueError(
            f"depth_strides {list(depth_strides)} for encoder {encoder!r}: need {count} values, each 1 or 2 "
            "(the depth stride of the stem and of each stage)"
        )
    return strides


class _PooledStages(StageEncoder):
    """Runs `stem` then `layer1..layerN`, pooling the returned stages over depth."""

    stem: nn.Module
    layers: list[str]

    def _finish(
        self, name: str, out_indices: Sequence[int], channels: list[int], reductions: list[int], depth_pool: str
    ) -> None:
        self.name = name
        self.out_indices = check_out_indices(out_indices, len(channels), name)
        self.feature_channels = [channels[i] for i in self.out_indices]
        self.feature_reductions = [reductions[i] for i in self.out_indices]
        self.depth_pool = check_depth_pool(depth_pool)
        # Stages deeper than the last returned one would get no gradient (DDP rejects unused parameters).
        for k in range(self.out_indices[-1] + 1, len(channels)):
            delattr(self, f"layer{k}")
        self.layers = [f"layer{k}" for k in range(1, self.out_indices[-1] + 1)]
        self.pools = nn.ModuleList(DepthPool(depth_pool, c) for c in self.feature_channels)

    def forward(self, image: Tensor) -> list[Tensor]:
        """Maps an image [B, D, H, W] to depth-pooled feature maps of `out_indices`, shallow to deep."""
        if image.ndim != 4:
            raise ValueError(f"encoder {self.name!r} expects an image [B, D, H, W], got shape {list(image.shape)}")
        x = self.stem(image.unsqueeze(1))
        stages = [x]
        for layer in self.layers:
            x = getattr(self, layer)(x)
            stages.append(x)
        return [pool(stages[i]) for pool, i in zip(self.pools, self.out_indices, strict=True)]

    def stage_parameters(self) -> list[tuple[str, list[nn.Parameter]]]:
        """``stem`` then ``stage{k}`` (the k-th residual layer, whose output is feature k)."""
        groups = [("stem", list(self.stem.parameters()))]
        groups += [(f"stage{k}", list(getattr(self, layer).parameters())) for k, layer in enumerate(self.layers, 1)]
        return [(name, params) for name, params in groups if params]


class VideoResNetEncoder3d(_PooledStages):
    """A torchvision video ResNet on a one-channel volume [B, 1, D, H, W].

    Features (index: channels, spatial reduction): 0 stem 64 /2, 1 layer1 64 /2, 2 layer2 128 /4,
    3 layer3 256 /8, 4 layer4 512 /16. The depth stride of the stem and of each layer is set by
    `depth_strides` (torchvision halves depth in layers 2-4 of r3d/r2plus1d; the default keeps full depth
    through layer2 so the surface's depth profile survives into the deeper stages).

    Args:
        name: ``r3d_18``, ``mc3_18`` or ``r2plus1d_18``.
        out_indices: feature stages to return; default (1, 2, 3, 4).
        depth_pool: ``mean``, ``max`` or ``attention``, applied to every returned stage.
        depth_strides: depth stride of (stem, layer1, layer2, layer3, layer4); layer1 must be 1.
        pretrained: load torchvision's Kinetics weights (opt-in; downloads them), RGB stem summed to one channel.
        pretrained_path: a local torchvision state dict file, loaded with ``strict=False``.
    """

    def __init__(
        self,
        name: str = "r3d_18",
        out_indices: Sequence[int] | None = None,
        depth_pool: str = "mean",
        depth_strides: Sequence[int] = (1, 1, 1, 2, 2),
        pretrained: bool = False,
        pretrained_path: str | None = None,
    ) -> None:
        super().__init__()
        if name not in VIDEO_RESNETS:
            raise ValueError(f"3-D encoder {name!r} is unknown; choose one of {list(ENCODERS_3D)}")
        if pretrained and pretrained_path:
            raise ValueError(f"encoder {name!r}: give either pretrained=True or pretrained_path, not both")
        strides = _check_depth_strides(depth_strides, 5, name)
        if strides[1] != 1:
            raise ValueError(f"depth_strides for {name!r}: layer1 (second value) must be 1; it has no shortcut conv")
        builder, weights_enum = VIDEO_RESNETS[name]
        try:
            net = builder(weights=weights_enum.DEFAULT if pretrained else None)
        except Exception as err:
            if not pretrained:
                raise
            raise RuntimeError(
                f"encoder {name!r}: downloading torchvision's Kinetics weights failed ({type(err).__name__}: "
                f"{err}); without network access, pass pretrained_path=<local weights file> and pretrained=False"
            ) from err
        self.stem = net.stem
        self._one_channel_stem()
        for k in range(1, 5):
            setattr(self, f"layer{k}", getattr(net, f"layer{k}"))
        self._set_depth_strides(strides)
        self._finish(
            name,
            (1, 2, 3, 4) if out_indices is None else out_indices,
            [64, 64, 128, 256, 512],
            [2, 2, 4, 8, 16],
            depth_pool,
        )
        self.weights_report = load_local_weights(self, pretrained_path, f"encoder {name}") if pretrained_path else None

    def _one_channel_stem(self) -> None:
        old = self.stem[0]
        new = nn.Conv3d(1, old.out_channels, old.kernel_size, old.stride, old.padding, bias=old.bias is not None)
        new.weight.data.copy_(adapt_input_channels(old.weight.data, 1))
        self.stem[0] = new

    def _set_depth_strides(self, strides: tuple[int, ...]) -> None:
        # The stem's depth conv is its first conv (r3d/mc3) or its separate (3, 1, 1) conv (r2plus1d).
        stem_depth_conv = self.stem[3] if len(self.stem) > 3 else self.stem[0]
        stem_depth_conv.stride = (strides[0], *stem_depth_conv.stride[1:])
        for k in range(2, 5):
            block = getattr(self, f"layer{k}")[0]
            conv = block.conv1[0]
            # Conv2Plus1D is (spatial conv, bn, relu, depth conv); the others are a single Conv3d.
            depth_conv = conv[3] if isinstance(conv, nn.Sequential) else conv
            depth_conv.stride = (strides[k], *depth_conv.stride[1:])
            shortcut = block.downsample[0]
            shortcut.stride = (strides[k], *shortcut.stride[1:])


def _conv_bn_relu3d(cin: int, cout: int, stride: tuple[int, int, int] = (1, 1, 1)) -> list[nn.Module]:
    return [nn.Conv3d(cin, cout, 3, stride=stride, padding=1, bias=False), nn.BatchNorm3d(cout), nn.ReLU(inplace=True)]


class Tiny3dEncoder(_PooledStages):
    """A small plain 3-D CNN for tests, demos and CPU runs.

    Feature 0 is the stem (one conv, spatial /2); feature k (k >= 1) is stage k (two convs, spatial /2^(k+1)).

    Args:
        widths: channels of the stem and of each stage, e.g. (8, 16, 32, 64).
        out_indices: feature stages to return; default all.
        depth_pool: ``mean``, ``max`` or ``attention``.
        depth_strides: depth stride of the stem and of each stage (same length as `widths`).
        pretrained_path: a local state dict of this encoder, loaded with ``strict=False``.
    """

    def __init__(
        self,
        widths: Sequence[int] = (8, 16, 32, 64),
        out_indices: Sequence[int] | None = None,
        depth_pool: str = "mean",
        depth_strides: Sequence[int] | None = None,
        pretrained_path: str | None = None,
    ) -> None:
        super().__init__()
        widths = [int(w) for w in widths]
        if not widths or any(w < 1 for w in widths):
            raise ValueError(f"widths for encoder 'tiny3d' must be positive channel counts, got {widths}")
        if depth_strides is None:
            depth_strides = [1] * min(len(widths), 2) + [2] * max(len(widths) - 2, 0)
        strides = _check_depth_strides(depth_strides, len(widths), TINY3D)
        self.stem = nn.Sequential(*_conv_bn_relu3d(1, widths[0], (strides[0], 2, 2)))
        for k in range(1, len(widths)):
            layers = _conv_bn_relu3d(widths[k - 1], widths[k], (strides[k], 2, 2))
            setattr(self, f"layer{k}", nn.Sequential(*layers, *_conv_bn_relu3d(widths[k], widths[k])))
        self._finish(
            TINY3D,
            range(len(widths)) if out_indices is None else out_indices,
            widths,
            [2 ** (k + 1) for k in range(len(widths))],
            depth_pool,
        )
        self.weights_report = load_local_weights(self, pretrained_path, "encoder tiny3d") if pretrained_path else None


def build_encoder3d(
    name: str,
    out_indices: Sequence[int] | None = None,
    depth_pool: str = "mean",
    pretrained: bool = False,
    pretrained_path: str | None = None,
    **kwargs: object,
) -> StageEncoder:
    """Builds a 3-D encoder by name (``r3d_18``, ``mc3_18``, ``r2plus1d_18`` or ``tiny3d``).

    Extra keyword arguments go to the encoder class (``depth_strides``; ``widths`` for ``tiny3d``).
    """
    if name == TINY3D:
        if pretrained:
            raise ValueError("encoder 'tiny3d' has no published weights: use pretrained_path or pretrained=False")
        return Tiny3dEncoder(out_indices=out_indices, depth_pool=depth_pool, pretrained_path=pretrained_path, **kwargs)
    return VideoResNetEncoder3d(
        name,
        out_indices=out_indices,
        depth_pool=depth_pool,
        pretrained=pretrained,
        pretrained_path=pretrained_path,
        **kwargs,
    )
