"""GradCAMCallback (callbacks/cam.py): files and TensorBoard images from a real fit, tiles kept across a resume."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import pytest
import pytorch_lightning as pl
import torch
from PIL import Image
from pytorch_lightning.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch import Tensor

from callbacks.cam import GradCAMCallback
from datamodules.ink_datamodule import InkDataModule
from datamodules.synthetic import make_demo_data
from tests.cam_models import DEPTH, TILE, ToyModule, tiny_net2d, tiny_net3d
from utils.checkpoints import load_checkpoint


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


# ---------------------------------------------------------------------------------------------- errors


def test_bad_settings_fail_at_once(tmp_path: Path) -> None:
    module = ToyModule(tiny_net2d())
    callback = GradCAMCallback(target_layer="net.encodr")
    with pytest.raises(ValueError, match=r"valid names include: .*net\.decoder"):
        callback.setup(pl.Trainer(default_root_dir=tmp_path, logger=False), module, "fit")
    with pytest.raises(ValueError, match="every_n_epochs=0"):
        GradCAMCallback(every_n_epochs=0)
    with pytest.raises(ValueError, match="inconsistent tiles"):
        GradCAMCallback().load_state_dict(
            {"tiles": {"image": torch.zeros(2, 3, 4, 4), "label": torch.zeros(2, 1, 4, 4),
                       "valid": torch.zeros(2, 1, 4, 4), "yx": torch.zeros(2, 2), "fragment": ["a"]}}
        )  # fmt: skip


# ---------------------------------------------------------------------------------------------- the real InkModule


@pytest.mark.skipif(importlib.util.find_spec("modules.ink_module") is None, reason="modules/ink_module.py not there")
def test_fit_with_real_ink_module(tmp_path: Path, demo_dir: Path) -> None:
    from modules.components.ink_net import NetConfig
    from modules.ink_module import InkModule

    torch.manual_seed(0)
    callback = GradCAMCallback(num_tiles=2)
    fit = trainer(tmp_path, [callback], max_epochs=1)
    net = NetConfig(encoder="tiny3d", encoder_kwargs={"widths": [4, 8, 16]})
    fit.fit(InkModule(num_slices=DEPTH, net=net), datamodule(demo_dir))
    assert callback.resolved_layer == "net.encoder.layer2"
    assert (Path(fit.log_dir) / "cam" / "epoch000_tile1_depth.png").is_file()
    assert {"cam/tile1", "cam/depth1"} <= set(image_tags(fit.log_dir))
