"""Encoders, depth pooling, decoder, head and InkNet: shapes, options and bad settings."""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch

from modules.components import DepthPool, InkNet, NetConfig, TimmEncoder2d, build_encoder3d, build_net
from modules.components.weights import adapt_input_channels

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("output_stride", [1, 2, 4])
def test_resnet10t_net_gives_tile_sized_logits_at_each_output_stride(output_stride: int) -> None:
    net = build_net(6, NetConfig(encoder="resnet10t", output_stride=output_stride)).eval()
    sizes: list[tuple[int, ...]] = []
    net.head.logit.register_forward_hook(lambda m, i, o: sizes.append(tuple(o.shape)))
    with torch.no_grad():
        logits = net(torch.randn(2, 6, 64, 64))
    assert logits.shape == (2, 1, 64, 64)
    # The logit map itself is predicted at tile / output_stride, then upsampled.
    assert sizes == [(2, 1, 64 // output_stride, 64 // output_stride)]


def test_output_stride_four_is_bilinear_upsampling_of_a_quarter_map() -> None:
    net = build_net(4, NetConfig(encoder="tiny3d", encoder_kwargs={"widths": (4, 8)}, output_stride=4)).eval()
    image = torch.randn(1, 4, 32, 32)
    with torch.no_grad():
        levels = net.decoder(net.encoder(image))
        quarter = net.head.logit(net.head.conv(torch.nn.functional.adaptive_avg_pool2d(levels[-1], (8, 8))))
        expected = torch.nn.functional.interpolate(quarter, size=(32, 32), mode="bilinear", align_corners=False)
        assert torch.allclose(net(image), expected, atol=1e-6)


def test_timm_encoder_reports_channels_and_reductions_of_its_features() -> None:
    encoder = TimmEncoder2d("resnet10t", in_channels=5, out_indices=(1, 2, 3))
    features = encoder(torch.randn(1, 5, 64, 64))
    assert encoder.out_indices == (1, 2, 3)
    assert [f.shape[1] for f in features] == encoder.feature_channels == [64, 128, 256]
    assert [64 // f.shape[-1] for f in features] == encoder.feature_reductions == [4, 8, 16]
    # Stages above the deepest returned one are not built.
    assert not hasattr(encoder.model, "layer4")


def test_efficientnet_encoder_drops_blocks_that_feed_no_returned_stage() -> None:
    # EfficientNet feature models keep every block; unused ones would break DDP (parameters without grad).
    encoder = TimmEncoder2d("efficientnet_b0", in_channels=3, out_indices=(1, 2))
    sum(f.sum() for f in encoder(torch.randn(1, 3, 32, 32))).backward()
    assert [n for n, p in encoder.named_parameters() if p.grad is None] == []
    assert encoder.feature_channels == [24, 40]


def test_timm_encoder_rejects_wrong_slice_count_and_bad_settings() -> None:
    encoder = TimmEncoder2d("resnet10t", in_channels=5)
    with pytest.raises(ValueError, match="num_slices=5"):
        encoder(torch.randn(1, 7, 32, 32))
    with pytest.raises(ValueError, match="not a timm model"):
        TimmEncoder2d("resnet_does_not_exist", in_channels=5)
    with pytest.raises(ValueError, match="out_indices"):
        TimmEncoder2d("resnet10t", in_channels=5, out_indices=(1, 9))
    with pytest.raises(ValueError, match="either pretrained"):
        TimmEncoder2d("resnet10t", in_channels=5, pretrained=True, pretrained_path="w.pth")


@pytest.mark.parametrize("name", ["r3d_18", "mc3_18", "r2plus1d_18"])
def test_video_resnets_keep_depth_through_layer2_and_return_pooled_2d_maps(name: str) -> None:
    encoder = build_encoder3d(name).eval()
    depths: dict[str, int] = {}
    for layer in encoder.layers:
        getattr(encoder, layer).register_forward_hook(
            lambda m, i, o, layer=layer: depths.__setitem__(layer, o.shape[2])
        )
    with torch.no_grad():
        features = encoder(torch.randn(1, 8, 32, 32))
    assert [tuple(f.shape) for f in features] == [(1, 64, 16, 16), (1, 128, 8, 8), (1, 256, 4, 4), (1, 512, 2, 2)]
    assert encoder.feature_reductions == [2, 4, 8, 16]
    # torchvision would halve depth in layer2 (r3d, r2plus1d); here depth 8 survives until layer3.
    assert depths == {"layer1": 8, "layer2": 8, "layer3": 4, "layer4": 2}
    assert encoder.stem[0].in_channels == 1


def test_video_resnet_depth_strides_are_configurable_and_checked() -> None:
    encoder = build_encoder3d("r3d_18", out_indices=(1, 2), depth_strides=(2, 1, 2, 2, 2))
    assert not hasattr(encoder, "layer3")
    x = encoder.stem(torch.randn(1, 1, 8, 16, 16))
    assert x.shape[2] == 4
    assert encoder.layer2(encoder.layer1(x)).shape[2] == 2
    with pytest.raises(ValueError, match="layer1"):
        build_encoder3d("r3d_18", depth_strides=(1, 2, 1, 2, 2))
    with pytest.raises(ValueError, match="depth_strides"):
        build_encoder3d("r3d_18", depth_strides=(1, 1))
    with pytest.raises(ValueError, match="unknown"):
        build_encoder3d("r4d_50")


@pytest.mark.parametrize("mode", ["mean", "max", "attention"])
def test_tiny3d_net_with_each_depth_pool_trains_every_parameter(mode: str) -> None:
    net = build_net(8, NetConfig(encoder="tiny3d", depth_pool=mode, encoder_kwargs={"widths": (4, 8, 16)}))
    logits = net(torch.randn(2, 8, 32, 32))
    assert logits.shape == (2, 1, 32, 32)
    logits.mean().backward()
    assert [n for n, p in net.named_parameters() if p.grad is None] == []
    assert all(pool.mode == mode for pool in net.encoder.pools)


def test_depth_pools_reduce_depth_as_documented() -> None:
    x = torch.randn(2, 3, 5, 4, 4)
    assert torch.allclose(DepthPool("mean", 3)(x), x.mean(2))
    assert torch.equal(DepthPool("max", 3)(x), x.amax(2))
    attention = DepthPool("attention", 3)
    # Starts as a mean; after the scores change it stays a convex combination over depth.
    assert torch.allclose(attention(x), x.mean(2), atol=1e-6)
    torch.nn.init.normal_(attention.score.weight, std=3.0)
    pooled = attention(x)
    assert not torch.allclose(pooled, x.mean(2), atol=1e-3)
    assert bool((pooled <= x.amax(2) + 1e-6).all() and (pooled >= x.amin(2) - 1e-6).all())
    with pytest.raises(ValueError, match="depth_pool"):
        DepthPool("median", 3)
    with pytest.raises(ValueError, match=r"\[B, C, D, H, W\]"):
        DepthPool("mean", 3)(torch.randn(2, 3, 4, 4))


def test_deep_supervision_returns_tile_sized_aux_logits_and_forward_stays_a_tensor() -> None:
    net = build_net(6, NetConfig(encoder="resnet10t", out_indices=(1, 2, 3, 4), deep_supervision=True)).eval()
    image = torch.randn(2, 6, 64, 64)
    with torch.no_grad():
        out = net.forward_with_aux(image)
        plain = net(image)
    assert isinstance(plain, torch.Tensor) and torch.allclose(plain, out["logits"])
    assert len(out["aux"]) == len(net.decoder.level_channels) - 1 == 2
    assert all(a.shape == (2, 1, 64, 64) for a in out["aux"])
    assert build_net(6, NetConfig(encoder="resnet10t")).forward_with_aux(image)["aux"] == []


def test_decoder_and_head_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="decoder_channels"):
        build_net(6, NetConfig(encoder="resnet10t", out_indices=(1, 2, 3), decoder_channels=[64, 32, 16]))
    net = build_net(6, NetConfig(encoder="resnet10t", out_indices=(1, 2, 3), decoder_channels=[48, 24]))
    assert net.decoder.level_channels == [48, 24]
    with pytest.raises(ValueError, match="output_stride"):
        build_net(6, NetConfig(encoder="resnet10t", output_stride=3))
    with pytest.raises(ValueError, match="deep_supervision"):
        build_net(6, NetConfig(encoder="resnet10t", out_indices=(3, 4), deep_supervision=True))
    with pytest.raises(ValueError, match="not divisible"):
        build_net(6, NetConfig(encoder="resnet10t", output_stride=4))(torch.randn(1, 6, 34, 34))
    with pytest.raises(ValueError, match="encoder_kind"):
        build_net(6, NetConfig(encoder="resnet10t", encoder_kind="3d"))
    with pytest.raises(ValueError, match="3-D encoders only"):
        build_net(6, NetConfig(encoder="resnet10t", encoder_kwargs={"widths": (4,)}))
    with pytest.raises(ValueError, match="depth_pool"):
        build_net(6, NetConfig(encoder="resnet10t", depth_pool="median"))


def test_single_stage_encoder_still_decodes() -> None:
    net = build_net(4, NetConfig(encoder="tiny3d", encoder_kwargs={"widths": (4, 8)}, out_indices=(1,)))
    assert isinstance(net, InkNet)
    assert net(torch.randn(1, 4, 16, 16)).shape == (1, 1, 16, 16)


def test_pretrained_path_loads_a_timm_rgb_checkpoint_and_adapts_the_first_conv(tmp_path: Path) -> None:
    source = timm.create_model("resnet10t", pretrained=False, in_chans=3)
    path = tmp_path / "resnet10t.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in source.state_dict().items()}}, path)
    encoder = TimmEncoder2d("resnet10t", in_channels=5, pretrained_path=str(path))
    assert encoder.weights_report.missing == [] and encoder.weights_report.adapted == ["conv1.0.weight"]
    assert encoder.weights_report.unexpected == ["module.fc.weight", "module.fc.bias"]  # the classifier
    loaded = encoder.model.state_dict()
    assert torch.equal(loaded["layer2.0.conv1.weight"], source.state_dict()["layer2.0.conv1.weight"])
    first = source.state_dict()["conv1.0.weight"]
    assert loaded["conv1.0.weight"].shape[1] == 5
    # A constant input gives the same first-conv response as the RGB weights did.
    assert torch.allclose(loaded["conv1.0.weight"].sum(1), first.sum(1), atol=1e-5)


def test_pretrained_path_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        build_net(4, NetConfig(encoder="resnet10t", pretrained_path=str(tmp_path / "missing.pth")))
    unrelated = tmp_path / "unrelated.pth"
    torch.save({"foo.weight": torch.zeros(3)}, unrelated)
    with pytest.raises(ValueError, match="unrelated.pth"):
        build_net(4, NetConfig(encoder="resnet10t", pretrained_path=str(unrelated)))


def test_pretrained_path_reports_missing_keys(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    source = timm.create_model("resnet10t", pretrained=False, in_chans=3).state_dict()
    path = tmp_path / "partial.pth"
    torch.save({k: v for k, v in source.items() if not k.startswith("layer4.")}, path)
    with caplog.at_level("WARNING"):
        encoder = TimmEncoder2d("resnet10t", in_channels=3, pretrained_path=str(path))
    assert encoder.weights_report.missing and all(k.startswith("layer4.") for k in encoder.weights_report.missing)
    assert "partial.pth" in caplog.text and "layer4." in caplog.text


def test_pretrained_path_round_trips_a_3d_encoder(tmp_path: Path) -> None:
    kwargs = {"widths": (4, 8)}
    source = build_net(4, NetConfig(encoder="tiny3d", encoder_kwargs=kwargs))
    path = tmp_path / "tiny3d.pt"
    torch.save(source.encoder.state_dict(), path)
    target = build_net(4, NetConfig(encoder="tiny3d", encoder_kwargs=kwargs, pretrained_path=str(path)))
    for (name, a), b in zip(source.encoder.state_dict().items(), target.encoder.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_adapt_input_channels_keeps_the_response_to_a_constant_input() -> None:
    weight = torch.randn(8, 3, 3, 7, 7)
    assert torch.allclose(adapt_input_channels(weight, 1), weight.sum(1, keepdim=True))
    many = adapt_input_channels(weight, 30)
    assert many.shape == (8, 30, 3, 7, 7)
    assert torch.allclose(many.sum(1), weight.sum(1), atol=1e-5)
