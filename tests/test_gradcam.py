"""modules/gradcam.py: Grad-CAM without a Trainer: model state untouched, meaningful CAMs, clear errors."""

from __future__ import annotations

import importlib.util
from typing import Any

import pytest
import torch
from torch import Tensor, nn

from modules.gradcam import compute_grad_cam, default_target_layer, target_masks
from tests.cam_models import DEPTH, TILE, Net, ToyModule, tiny_net2d, tiny_net3d

# ---------------------------------------------------------------------------------------------- model state


def test_cam_leaves_model_state_untouched() -> None:
    torch.manual_seed(0)
    module = ToyModule(tiny_net2d())
    module.train()
    module.net.decoder.eval()  # a mixed state must survive exactly
    module.net.encoder[0].weight.requires_grad_(False)
    module.net.head.weight.grad = torch.full_like(module.net.head.weight, 3.0)
    state = {k: v.clone() for k, v in module.state_dict().items()}
    modes = {n: m.training for n, m in module.named_modules()}
    flags = {n: p.requires_grad for n, p in module.named_parameters()}
    grads = {n: None if p.grad is None else p.grad.clone() for n, p in module.named_parameters()}
    with torch.inference_mode():  # as in Lightning's validation loop: inputs are inference tensors
        image = torch.rand(2, DEPTH, TILE, TILE)
        result = compute_grad_cam(module, image, target_layer="net.encoder.3")
    assert result.cam.shape == (2, TILE, TILE) and result.input_depth.shape == (2, DEPTH)
    assert result.cam_depth is None and result.activation_shape == (2, 8, 16, 16)
    assert float(result.cam.max()) == pytest.approx(1.0) and float(result.cam.min()) >= 0.0
    assert {n: m.training for n, m in module.named_modules()} == modes
    assert {n: p.requires_grad for n, p in module.named_parameters()} == flags
    for name, value in module.state_dict().items():
        assert torch.equal(value, state[name]), name  # parameters and BatchNorm statistics
    for name, param in module.named_parameters():
        assert (param.grad is None and grads[name] is None) or torch.equal(param.grad, grads[name]), name
    assert not module.net.encoder[3]._forward_hooks  # hooks removed


def test_cam_under_autocast_and_with_a_frozen_model() -> None:
    module = ToyModule(tiny_net3d())
    for p in module.parameters():
        p.requires_grad_(False)  # a frozen model still gets a CAM: the input requires grad
    with torch.autocast("cpu", dtype=torch.bfloat16):
        result = compute_grad_cam(module, torch.rand(1, DEPTH, 16, 16), target="valid")
    assert result.layer == "net.encoder.stage1" and result.cam_depth is not None
    assert result.cam.dtype == torch.float32 and result.logits.dtype == torch.float32
    assert result.cam_depth.sum().item() == pytest.approx(1.0)
    assert all(not p.requires_grad for p in module.parameters())


# ---------------------------------------------------------------------------------------------- meaningful CAMs


class PickChannel(nn.Module):
    def __init__(self, channel: int) -> None:
        super().__init__()
        self.channel = channel

    def forward(self, x: Tensor) -> Tensor:
        return x[:, self.channel : self.channel + 1]


def region_case(channel: int) -> tuple[ToyModule, Tensor]:
    """Slice 0 is bright top-left, slice 3 bottom-right; channel 0 copies slice 0, channel 1 slice 3."""
    encoder = nn.Conv2d(4, 2, 1, bias=False)
    with torch.no_grad():
        encoder.weight.zero_()
        encoder.weight[0, 0] = 1.0
        encoder.weight[1, 3] = 1.0
    image = torch.zeros(1, 4, 16, 16)
    image[0, 0, 2:6, 2:6] = 1.0
    image[0, 3, 10:14, 10:14] = 1.0
    image[0, 1:3] = 0.5  # slices the logit never reads
    return ToyModule(Net(encoder, PickChannel(channel), nn.Identity())), image


@pytest.mark.parametrize("channel", [0, 1])
def test_cam_peaks_where_the_logit_reads(channel: int) -> None:
    module, image = region_case(channel)
    result = compute_grad_cam(module, image, target="valid", target_layer="net.encoder")
    cam = result.cam[0]
    hot, cold = (slice(2, 6), slice(10, 14)) if channel == 0 else (slice(10, 14), slice(2, 6))
    assert float(cam[hot, hot].mean()) > 0.9
    assert float(cam[cold, cold].max()) < 0.05
    read_slice = 0 if channel == 0 else 3
    assert int(result.input_depth[0].argmax()) == read_slice
    assert float(result.input_depth[0, read_slice]) == pytest.approx(1.0)


class DepthSlice(nn.Module):
    """A 3-D encoder whose output is its activation at one depth index only."""

    def __init__(self, index: int, depth_stride: int) -> None:
        super().__init__()
        self.index = index
        self.conv = nn.Conv3d(1, 2, 1, stride=(depth_stride, 1, 1))
        with torch.no_grad():
            self.conv.weight.fill_(1.0)
            self.conv.bias.zero_()

    def forward(self, image: Tensor) -> Tensor:
        return self.conv(image.unsqueeze(1))[:, :, self.index]


@pytest.mark.parametrize(("index", "depth_stride", "peak_slices"), [(5, 1, {5}), (1, 2, {2, 3})])
def test_depth_profile_peaks_at_the_slice_the_output_uses(index: int, depth_stride: int, peak_slices: set[int]) -> None:
    torch.manual_seed(0)
    head = nn.Conv2d(2, 1, 1)
    with torch.no_grad():
        head.weight.fill_(1.0)  # ink evidence grows with the activation (a negative weight gives ReLU(.) = 0)
    module = ToyModule(Net(DepthSlice(index, depth_stride), nn.Identity(), head))
    image = torch.rand(2, 8, 12, 12) + 0.5  # every slice is active; only one matters
    result = compute_grad_cam(module, image, target="valid")
    assert result.layer == "net.encoder.conv"  # the default picks the 5-D activation
    assert result.cam_depth is not None and result.cam_depth.shape == (2, 8)
    for profile in (result.cam_depth, result.input_depth):
        assert set(profile.argmax(dim=1).tolist()) <= peak_slices, profile
    if depth_stride == 1:
        assert torch.allclose(result.cam_depth[:, index], torch.ones(2))
        assert torch.allclose(result.input_depth[:, index], torch.ones(2))


def test_target_masks_fall_back() -> None:
    logits = torch.full((3, 1, 4, 4), -1.0)
    logits[0, 0, 0, 0] = 2.0
    label = torch.zeros(3, 1, 4, 4)
    label[1, 0, 1, 1] = 1.0
    valid = torch.ones(3, 1, 4, 4)
    mask, sources = target_masks(logits, label, valid)
    assert sources == ["predicted", "label", "valid"]
    assert mask[0].sum() == 1 and mask[1, 0, 1, 1] == 1 and mask[2].sum() == 16
    with pytest.raises(ValueError, match="target='ink'"):
        target_masks(logits, label, valid, "ink")


# ------------------------------------------------------------------------------------------- errors, default layer


def test_bad_target_layer_lists_valid_names() -> None:
    module = ToyModule(tiny_net2d())
    with pytest.raises(ValueError, match=r"target_layer='net.encoder.9'.*close matches.*net\.encoder\.0"):
        compute_grad_cam(module, torch.rand(1, DEPTH, TILE, TILE), target_layer="net.encoder.9")
    module.net.unused = nn.Conv2d(1, 1, 1)
    with pytest.raises(ValueError, match="target_layer='net.unused' ran 0 times"):
        compute_grad_cam(module, torch.rand(1, DEPTH, TILE, TILE), target_layer="net.unused")
    with pytest.raises(ValueError, match="needs the LightningModule"):
        compute_grad_cam(nn.Linear(2, 2), torch.rand(1, DEPTH, TILE, TILE))


def test_default_target_layer_skips_one_pixel_maps() -> None:
    encoder = nn.Sequential(nn.Conv2d(DEPTH, 4, 3, stride=2, padding=1), nn.Conv2d(4, 4, 3, stride=32, padding=1))
    module = ToyModule(Net(encoder, nn.Upsample(size=(TILE, TILE)), nn.Conv2d(4, 1, 1)))
    assert default_target_layer(module, torch.rand(1, DEPTH, TILE, TILE)) == "net.encoder.0"


# ---------------------------------------------------------------------------------------------- the real InkModule


@pytest.mark.skipif(importlib.util.find_spec("modules.ink_module") is None, reason="modules/ink_module.py not there")
@pytest.mark.parametrize(
    ("encoder", "kwargs"), [("tiny3d", {"encoder_kwargs": {"widths": [4, 8, 16]}}), ("resnet10t", {})]
)
def test_real_ink_module(encoder: str, kwargs: dict[str, Any]) -> None:
    from modules.components.ink_net import NetConfig
    from modules.ink_module import InkModule

    torch.manual_seed(0)
    module = InkModule(num_slices=DEPTH, net=NetConfig(encoder=encoder, **kwargs))
    module.train()
    before = {k: v.clone() for k, v in module.state_dict().items()}
    result = compute_grad_cam(module, torch.rand(2, DEPTH, TILE, TILE))
    assert result.cam.shape == (2, TILE, TILE) and result.input_depth.shape == (2, DEPTH)
    if encoder == "tiny3d":
        assert result.layer == "net.encoder.layer2" and len(result.activation_shape) == 5
        assert result.cam_depth is not None and result.cam_depth.shape == (2, DEPTH)
    else:
        assert result.layer == "net.encoder.model.layer3" and result.cam_depth is None  # layer4 is 1×1 at T=32
    assert module.training and all(m.training for m in module.modules())
    assert all(torch.equal(v, before[k]) for k, v in module.state_dict().items())
