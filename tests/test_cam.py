"""GradCAMCallback: files and TensorBoard images from a real fit, model state untouched, meaningful CAMs."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from PIL import Image
from pytorch_lightning.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch import Tensor, nn

from callbacks.cam import GradCAMCallback, compute_grad_cam, default_target_layer, target_masks
from callbacks.overlay import cam_overlay, depth_profile_chart, outline, write_png
from datamodules.ink_datamodule import InkDataModule
from datamodules.synthetic import make_demo_data
from utils.checkpoints import load_checkpoint

DEPTH, TILE = 8, 32


# ---------------------------------------------------------------------------------------------- tiny models


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


class RecordingCAM(GradCAMCallback):
    """Records each run: whether it was a sanity check, the epoch and the tiles used."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.runs: list[tuple[bool, int, Tensor, Tensor]] = []
        self.selections = 0

    def run(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> list[Path]:
        paths = super().run(trainer, pl_module)
        self.runs.append(
            (trainer.sanity_checking, trainer.current_epoch, self.tiles["yx"].clone(), self.tiles["image"])
        )
        return paths

    def select_tiles(self, trainer: pl.Trainer) -> dict[str, Any] | None:
        self.selections += 1
        return super().select_tiles(trainer)


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("cam_data")
    make_demo_data(folder, num_fragments=1, height=96, width=96, depth=16)
    return folder


def datamodule(data_dir: Path) -> InkDataModule:
    return InkDataModule(
        data_dir=str(data_dir), z_start=4, z_end=12, tile_size=TILE, num_workers=0, batch_size=4,
        samples_per_epoch=8, folds=3,
    )  # fmt: skip


def trainer(root: Path, callbacks: list[pl.Callback], max_epochs: int = 2, precision: str = "32-true") -> pl.Trainer:
    return pl.Trainer(
        default_root_dir=root, precision=precision, max_epochs=max_epochs, limit_train_batches=2,
        limit_val_batches=2, accelerator="cpu", logger=TensorBoardLogger(root), callbacks=callbacks,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
    )  # fmt: skip


def image_tags(log_dir: str) -> list[str]:
    events = EventAccumulator(log_dir, size_guidance={"images": 0})
    events.Reload()
    return events.Tags()["images"]


# ---------------------------------------------------------------------------------------------- the callback in a fit


def test_fit_writes_pngs_and_tensorboard_images(tmp_path: Path, demo_dir: Path) -> None:
    torch.manual_seed(0)
    every = RecordingCAM(num_tiles=2)
    every_second = RecordingCAM(
        every_n_epochs=2, num_tiles=2, target_layer="net.encoder.0", output_dir=str(tmp_path / "cam2"),
        log_to_tensorboard=False,
    )  # fmt: skip
    fit = trainer(tmp_path, [every, every_second], max_epochs=3)
    fit.fit(ToyModule(tiny_net2d()), datamodule=datamodule(demo_dir))

    assert fit.num_sanity_val_steps > 0  # a sanity check ran, and the callback skipped it
    assert [(s, e) for s, e, *_ in every.runs] == [(False, 0), (False, 1), (False, 2)]
    assert [(s, e) for s, e, *_ in every_second.runs] == [(False, 1)]
    assert every.resolved_layer == "net.encoder"  # deepest 4-D encoder activation (h, w = 16): its output
    cam_dir = Path(fit.log_dir) / "cam"
    for epoch in range(3):
        for i in range(2):
            with Image.open(cam_dir / f"epoch{epoch:03d}_tile{i}.png") as img:
                assert img.size == (TILE, TILE) and img.mode == "RGB"
                img.load()
            with Image.open(cam_dir / f"epoch{epoch:03d}_tile{i}_depth.png") as img:
                assert img.size == (360, 220)
                img.load()
    assert sorted(p.name for p in (tmp_path / "cam2").iterdir()) == [
        "epoch001_tile0.png", "epoch001_tile0_depth.png", "epoch001_tile1.png", "epoch001_tile1_depth.png",
    ]  # fmt: skip
    assert not list(cam_dir.glob(".*"))  # no temporary files left behind
    assert {"cam/tile0", "cam/tile1", "cam/depth0", "cam/depth1"} <= set(image_tags(fit.log_dir))

    # The same tiles every epoch, and tiles with ink were preferred (the demo's validation band has ink).
    first_yx, first_image = every.runs[0][2], every.runs[0][3]
    for _, _, yx, image in every.runs[1:]:
        assert torch.equal(yx, first_yx) and torch.equal(image, first_image)
    assert every.selections == 1
    assert (every.tiles["label"].flatten(1).mean(1) >= every.min_ink_fraction).all()

    # state_dict / load_state_dict carry the tiles to a fresh callback.
    restored = GradCAMCallback(num_tiles=2)
    restored.load_state_dict(every.state_dict())
    for key in ("image", "label", "valid", "yx"):
        assert torch.equal(restored.tiles[key], every.tiles[key])
    assert restored.tiles["fragment"] == every.tiles["fragment"]


def test_resumed_run_reuses_checkpointed_tiles(tmp_path: Path, demo_dir: Path) -> None:
    torch.manual_seed(1)
    first = RecordingCAM(num_tiles=2)
    fit = trainer(tmp_path / "a", [first], max_epochs=1)
    model = ToyModule(tiny_net3d())
    fit.fit(model, datamodule=datamodule(demo_dir))
    ckpt = tmp_path / "last.ckpt"
    fit.save_checkpoint(ckpt)
    assert torch.equal(load_checkpoint(ckpt)["callbacks"][first.state_key]["tiles"]["yx"], first.tiles["yx"])
    torch.save(first.state_dict(), tmp_path / "state.pt")  # the callback's own state loads safely
    assert torch.load(tmp_path / "state.pt", weights_only=True)["tiles"]["fragment"] == first.tiles["fragment"]

    resumed = RecordingCAM(num_tiles=2)
    fit2 = trainer(tmp_path / "b", [resumed], max_epochs=2, precision="bf16-mixed")  # CAM runs without autocast
    # Lightning's own load is weights-only too; InkDataModule's AugmentConfig hyperparameter is on the allow-list.
    fit2.fit(ToyModule(tiny_net3d()), datamodule=datamodule(demo_dir), ckpt_path=ckpt)
    assert resumed.selections == 0
    assert [e for _, e, *_ in resumed.runs] == [1]
    assert torch.equal(resumed.runs[0][2], first.tiles["yx"])
    assert resumed.resolved_layer == "net.encoder.stage1"  # 5-D layers preferred; the deepest of them
    assert (Path(fit2.log_dir) / "cam" / "epoch001_tile0_depth.png").is_file()


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


# ---------------------------------------------------------------------------------------------- errors and helpers


def test_bad_target_layer_lists_valid_names(tmp_path: Path) -> None:
    module = ToyModule(tiny_net2d())
    with pytest.raises(ValueError, match=r"target_layer='net.encoder.9'.*close matches.*net\.encoder\.0"):
        compute_grad_cam(module, torch.rand(1, DEPTH, TILE, TILE), target_layer="net.encoder.9")
    callback = GradCAMCallback(target_layer="net.encodr")
    with pytest.raises(ValueError, match=r"valid names include: .*net\.decoder"):
        callback.setup(pl.Trainer(default_root_dir=tmp_path, logger=False), module, "fit")
    module.net.unused = nn.Conv2d(1, 1, 1)
    with pytest.raises(ValueError, match="target_layer='net.unused' ran 0 times"):
        compute_grad_cam(module, torch.rand(1, DEPTH, TILE, TILE), target_layer="net.unused")
    with pytest.raises(ValueError, match="needs the LightningModule"):
        compute_grad_cam(nn.Linear(2, 2), torch.rand(1, DEPTH, TILE, TILE))
    with pytest.raises(ValueError, match="every_n_epochs=0"):
        GradCAMCallback(every_n_epochs=0)
    with pytest.raises(ValueError, match="inconsistent tiles"):
        GradCAMCallback().load_state_dict(
            {"tiles": {"image": torch.zeros(2, 3, 4, 4), "label": torch.zeros(2, 1, 4, 4),
                       "valid": torch.zeros(2, 1, 4, 4), "yx": torch.zeros(2, 2), "fragment": ["a"]}}
        )  # fmt: skip


def test_default_target_layer_skips_one_pixel_maps() -> None:
    encoder = nn.Sequential(nn.Conv2d(DEPTH, 4, 3, stride=2, padding=1), nn.Conv2d(4, 4, 3, stride=32, padding=1))
    module = ToyModule(Net(encoder, nn.Upsample(size=(TILE, TILE)), nn.Conv2d(4, 1, 1)))
    assert default_target_layer(module, torch.rand(1, DEPTH, TILE, TILE)) == "net.encoder.0"


def test_overlay_helpers(tmp_path: Path) -> None:
    label = np.zeros((8, 8))
    label[2:6, 2:6] = 1
    ring = outline(label > 0)
    assert ring.sum() == 12 and not ring[3:5, 3:5].any()
    image = cam_overlay(np.random.default_rng(0).random((8, 8)), np.zeros((8, 8)), label)
    assert image.shape == (8, 8, 3) and (image[ring] == [0, 255, 0]).all()
    assert (image[~ring][:, 0] == image[~ring][:, 1]).all()  # zero CAM: plain grey outside the outline
    chart = depth_profile_chart([0.1, 0.6, 0.3], [0.2, 0.5, 0.3], first_slice=15, title="t")
    path = write_png(tmp_path / "a" / "chart.png", chart)
    with Image.open(path) as img:
        assert img.size == (360, 220)
    assert sorted(p.name for p in path.parent.iterdir()) == ["chart.png"]
    with pytest.raises(ValueError, match="equal length"):
        depth_profile_chart([0.5, 0.5], [1.0])
    with pytest.raises(ValueError, match="uint8"):
        write_png(tmp_path / "x.png", np.zeros((4, 4)))


# ---------------------------------------------------------------------------------------------- the real InkModule


@pytest.mark.skipif(importlib.util.find_spec("modules.ink_module") is None, reason="modules/ink_module.py not there")
@pytest.mark.parametrize(
    ("encoder", "kwargs"), [("tiny3d", {"encoder_kwargs": {"widths": [4, 8, 16]}}), ("resnet10t", {})]
)
def test_real_ink_module(encoder: str, kwargs: dict[str, Any]) -> None:
    from modules.ink_module import InkModule

    torch.manual_seed(0)
    module = InkModule(num_slices=DEPTH, encoder=encoder, **kwargs)
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


@pytest.mark.skipif(importlib.util.find_spec("modules.ink_module") is None, reason="modules/ink_module.py not there")
def test_fit_with_real_ink_module(tmp_path: Path, demo_dir: Path) -> None:
    from modules.ink_module import InkModule

    torch.manual_seed(0)
    callback = GradCAMCallback(num_tiles=2)
    fit = trainer(tmp_path, [callback], max_epochs=1)
    fit.fit(InkModule(num_slices=DEPTH, encoder="tiny3d", encoder_kwargs={"widths": [4, 8, 16]}), datamodule(demo_dir))
    assert callback.resolved_layer == "net.encoder.layer2"
    assert (Path(fit.log_dir) / "cam" / "epoch000_tile1_depth.png").is_file()
    assert {"cam/tile1", "cam/depth1"} <= set(image_tags(fit.log_dir))
