"""InkModule: optimizers and schedules, encoder freezing, NaN checks, whole-fragment evaluation, overfitting."""

from __future__ import annotations

import dataclasses
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from pytorch_lightning.cli import LightningCLI
from torch.utils.data import DataLoader

from modules.components.ink_net import NetConfig
from modules.evaluation import EvalConfig
from modules.ink_module import SETTINGS_GROUPS, InkModule, shapeless_hparams
from modules.losses import InkLoss
from modules.optimization import OptimConfig
from utils.checkpoints import load_checkpoint

TINY_NET = {"encoder": "tiny3d", "encoder_kwargs": {"widths": [4, 8, 16]}}
TINY = {"num_slices": 4, "net": NetConfig(**TINY_NET)}


pytestmark = pytest.mark.usefixtures("one_thread")


def _pattern(depth: int, height: int, width: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A volume whose ink label is learnable from it: a smooth field, seen through noise in every slice."""
    gen = torch.Generator().manual_seed(seed)
    field = torch.randn(1, 1, height // 8, width // 8, generator=gen)
    field = F.interpolate(field, size=(height, width), mode="bilinear", align_corners=False)[0, 0]
    volume = field + 0.3 * torch.randn(depth, height, width, generator=gen)
    return (volume / 4 + 0.5).float(), (field > 0).float()


class TinyFragments(pl.LightningDataModule):
    """Two synthetic 64×64 fragments tiled into overlapping 32×32 windows (stride 16)."""

    def __init__(self, num_slices: int = 4, tile_size: int = 32, batch_size: int = 4) -> None:
        super().__init__()
        self.tile_size = tile_size
        self.batch_size = batch_size
        self.fragments = {}
        for i, fid in enumerate(("frag_a", "frag_b")):
            volume, label = _pattern(num_slices, 64, 64, seed=i)
            valid = torch.zeros(64, 64)
            valid[3:-2, 2:-4] = 1
            self.fragments[fid] = (volume, label * valid, valid)

    def fragment_shapes(self, stage: str) -> dict[str, tuple[int, int]]:
        return {fid: (64, 64) for fid in self.fragments}

    def _items(self, with_labels: bool) -> list[dict]:
        t = self.tile_size
        items = []
        for fid, (volume, label, valid) in self.fragments.items():
            for y in range(0, 64 - t + 1, 16):
                for x in range(0, 64 - t + 1, 16):
                    item = {
                        "image": volume[:, y : y + t, x : x + t],
                        "valid": valid[None, y : y + t, x : x + t],
                        "fragment": fid,
                        "yx": torch.tensor([y, x]),
                    }
                    if with_labels:
                        item["label"] = label[None, y : y + t, x : x + t]
                    items.append(item)
        return items

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self._items(True), batch_size=self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self._items(True), batch_size=self.batch_size)

    def test_dataloader(self) -> DataLoader:
        return DataLoader(self._items(True), batch_size=self.batch_size)

    def predict_dataloader(self) -> DataLoader:
        return DataLoader(self._items(False), batch_size=self.batch_size)


def _trainer(**kwargs) -> pl.Trainer:
    settings = {
        "accelerator": "cpu",
        "devices": 1,
        "max_epochs": 1,
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "num_sanity_val_steps": 0,
    }
    return pl.Trainer(**{**settings, **kwargs})


def test_configure_optimizers_builds_named_groups_and_a_per_step_warmup_cosine() -> None:
    module = InkModule(**TINY, optim=OptimConfig(lr=1e-2, layer_decay=0.5, warmup_fraction=0.1))
    module.trainer = SimpleNamespace(estimated_stepping_batches=100)
    config = module.configure_optimizers()
    optimizer, scheduler = config["optimizer"], config["lr_scheduler"]
    assert isinstance(optimizer, torch.optim.AdamW)
    names = [g["name"] for g in optimizer.param_groups]
    assert {"head", "decoder", "encoder.stem", "encoder.stage2"} <= set(names)
    assert scheduler["interval"] == "step" and scheduler["frequency"] == 1
    peak = {g["name"]: g["initial_lr"] for g in optimizer.param_groups}
    assert peak["head"] == 1e-2 and peak["encoder.stage2"] == pytest.approx(5e-3)
    lrs = []
    for _ in range(100):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler["scheduler"].step()
    assert lrs[0] == pytest.approx(1e-3) and max(lrs) == pytest.approx(1e-2) and lrs[9] == pytest.approx(1e-2)
    assert lrs[-1] < 1e-4


def test_injected_optimizer_and_scheduler_callables_are_used() -> None:
    module = InkModule(
        **TINY,
        optimizer=lambda params: torch.optim.SGD(params, lr=123.0, momentum=0.9),
        scheduler=lambda opt: torch.optim.lr_scheduler.StepLR(opt, step_size=5),
    )
    config = module.configure_optimizers()
    assert isinstance(config["optimizer"], torch.optim.SGD)
    # Group learning rates override the callable's default.
    assert {g["lr"] for g in config["optimizer"].param_groups} == {1e-3}
    assert isinstance(config["lr_scheduler"]["scheduler"], torch.optim.lr_scheduler.StepLR)


def test_lightning_cli_injects_the_optimizer_class(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "argv", ["fit"])  # pytest's own arguments are not the CLI's
    args = ["--model.num_slices=4", "--model.net.encoder=tiny3d", "--model.optimizer=SGD", "--model.optimizer.lr=0.5"]
    cli = LightningCLI(InkModule, run=False, args=args, save_config_callback=None)
    module = cli.model
    module.trainer = SimpleNamespace(estimated_stepping_batches=10)
    optimizer = module.configure_optimizers()["optimizer"]
    assert isinstance(optimizer, torch.optim.SGD)
    assert "optimizer" not in module.hparams


def test_missing_finite_step_count_is_a_clear_error() -> None:
    module = InkModule(**TINY)
    module.trainer = SimpleNamespace(estimated_stepping_batches=float("inf"), callbacks=[])
    with pytest.raises(ValueError, match="max_time, trainer.max_epochs or trainer.max_steps"):
        module.configure_optimizers()


def test_a_time_budget_drives_warmup_and_cosine(monkeypatch: pytest.MonkeyPatch) -> None:
    """With max_time and no step count, the schedule follows the share of the budget spent."""
    from pytorch_lightning.callbacks import Timer

    timer = Timer(duration="00:00:01:40")  # 100 s
    clock = {"elapsed": 0.0}
    monkeypatch.setattr(timer, "time_elapsed", lambda stage="train": clock["elapsed"])
    module = InkModule(**TINY, optim=OptimConfig(lr=1e-2, warmup_fraction=0.1))
    module.trainer = SimpleNamespace(estimated_stepping_batches=float("inf"), callbacks=[timer], world_size=1)
    config = module.configure_optimizers()
    optimizer, scheduler = config["optimizer"], config["lr_scheduler"]["scheduler"]
    head = next(g for g in optimizer.param_groups if g["name"] == "head")
    seen = {}
    for elapsed in (0.0, 5.0, 10.0, 55.0, 99.0, 150.0):
        clock["elapsed"] = elapsed
        optimizer.step()
        scheduler.step()
        seen[elapsed] = head["lr"]
    assert seen[5.0] == pytest.approx(5e-3)  # half-way through the warm-up
    assert seen[10.0] == pytest.approx(1e-2)  # the peak at the end of the warm-up
    assert seen[55.0] == pytest.approx(5e-3, rel=1e-3)  # half-way down the cosine
    assert seen[99.0] < 1e-4 and seen[150.0] == 0.0


def test_nan_loss_raises_naming_the_step() -> None:
    module = InkModule(**TINY)
    image = torch.full((2, 4, 32, 32), float("nan"))
    batch = {"image": image, "label": torch.zeros(2, 1, 32, 32), "valid": torch.ones(2, 1, 32, 32)}
    with pytest.raises(FloatingPointError, match="train/loss is nan at global step 0.*bf16"):
        module.training_step(batch, 0)
    with pytest.raises(ValueError, match="no 'label'"):
        module.training_step({"image": image}, 0)


def test_set_encoder_frozen_toggles_grads_and_batchnorm_mode() -> None:
    module = InkModule(num_slices=4, net=NetConfig(**TINY_NET, depth_pool="attention"))
    module.train()
    module.set_encoder_frozen(True)
    stage_params = [p for _, ps in module.net.encoder.stage_parameters() for p in ps]
    assert not any(p.requires_grad for p in stage_params)
    assert all(p.requires_grad for p in module.net.encoder.pools.parameters())  # new layers keep training
    assert all(p.requires_grad for p in module.net.decoder.parameters())
    module.train()  # Lightning re-enters train mode every epoch: the frozen encoder must stay in eval
    assert not module.net.encoder.training and module.net.decoder.training
    module.set_encoder_frozen(False)
    assert all(p.requires_grad for p in stage_params) and module.net.encoder.training


class _Record(pl.Callback):
    def __init__(self) -> None:
        self.frozen: list[tuple[bool, bool]] = []
        self.encoder_states: list[dict[str, torch.Tensor]] = []
        self.maps_at_validation_end: list[set[str]] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if batch_idx == 0:
            requires = [p.requires_grad for _, ps in pl_module.net.encoder.stage_parameters() for p in ps]
            self.frozen.append((not any(requires), pl_module.net.encoder.training))

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.encoder_states.append({k: v.clone() for k, v in pl_module.net.encoder.state_dict().items()})

    def on_validation_end(self, trainer, pl_module) -> None:
        self.maps_at_validation_end.append(set(pl_module.last_eval_maps))


def test_fit_test_predict_score_whole_fragments_and_freeze_the_encoder_first() -> None:
    data = TinyFragments()
    module = InkModule(**TINY, optim=OptimConfig(lr=1e-2, freeze_encoder_epochs=1), eval=EvalConfig(stitch_stride=2))
    initial = {k: v.clone() for k, v in module.net.encoder.state_dict().items()}
    record = _Record()
    trainer = _trainer(max_epochs=2, limit_train_batches=3, callbacks=[record])
    trainer.fit(module, datamodule=data)

    # Epoch 0 trains with a frozen encoder (weights and BatchNorm statistics untouched), epoch 1 unfreezes it.
    assert record.frozen == [(True, False), (False, True)]
    assert all(torch.equal(initial[k], v) for k, v in record.encoder_states[0].items())
    assert any(not torch.equal(initial[k], v) for k, v in record.encoder_states[1].items())

    metrics = trainer.callback_metrics
    for name in ("train/loss", "val/loss", "val/f05", "val/f05_best", "val/threshold", "val/ap"):
        assert name in metrics and torch.isfinite(metrics[name]), name
    assert record.maps_at_validation_end == [{"frag_a", "frag_b"}] * 2
    maps = module.last_eval_maps["frag_a"]
    # stitch_stride 2; validation maps are kept as float16 through training (scores come from float32 counts).
    assert maps["prob"].shape == (32, 32) and maps["prob"].dtype == np.float16
    assert maps["box"] == (0, 0, 64, 64)
    # Every stored pixel is covered by a tile; valid follows the mask (majority of each 2×2 block).
    expected_valid = data.fragments["frag_a"][2].reshape(32, 2, 32, 2).mean((1, 3)).numpy() >= 0.5
    assert np.array_equal(maps["valid"], expected_valid)
    assert set(np.unique(maps["label"])) <= {0, 1}

    val_threshold = float(metrics["val/threshold"])
    assert module.val_threshold == pytest.approx(val_threshold)
    trainer.test(module, datamodule=data)
    for name in (
        "test/f05",
        "test/f05_oracle",
        "test/threshold_oracle",
        "test/ap",
        "test/frag_a/f05",
        "test/frag_b/f05",
    ):
        assert name in trainer.callback_metrics, name
    # Test is scored at the threshold validation chose, never at one tuned on test.
    assert float(trainer.callback_metrics["test/val_threshold"]) == pytest.approx(val_threshold)
    assert "test/f05_val_threshold" in trainer.callback_metrics and "test/f05_best" not in trainer.callback_metrics
    assert module.last_eval_stage == "test"

    predictions = trainer.predict(module, datamodule=data)
    assert predictions[0]["prob"].shape == (4, 1, 32, 32) and len(predictions[0]["fragment"]) == 4
    # Prediction returns tile probabilities (the writer stitches them band by band); nothing is stitched in memory.
    assert predictions[0]["valid"].shape == (4, 1, 32, 32) and predictions[0]["yx"].shape == (4, 2)
    assert all(0.0 <= float(p["prob"].min()) <= float(p["prob"].max()) <= 1 for p in predictions)
    assert module.last_eval_stage == "test"


def test_freezing_under_ddp_without_unused_parameter_detection_is_rejected() -> None:
    module = InkModule(**TINY, optim=OptimConfig(freeze_encoder_epochs=1))
    module.trainer = SimpleNamespace(strategy=pl.strategies.DDPStrategy())
    with pytest.raises(ValueError, match="ddp_find_unused_parameters_true"):
        module.on_fit_start()
    module.trainer = SimpleNamespace(strategy=pl.strategies.DDPStrategy(find_unused_parameters=True))
    module.on_fit_start()


def test_evaluation_without_fragment_shapes_is_a_clear_error() -> None:
    module = InkModule(**TINY)
    loader = TinyFragments().val_dataloader()
    with pytest.raises(RuntimeError, match="fragment_shapes"):
        _trainer().validate(module, dataloaders=loader)


def test_tta_predictions_follow_rotations_of_the_input() -> None:
    module = InkModule(**TINY, eval=EvalConfig(tta=True)).eval()
    image = torch.rand(2, 4, 32, 32)
    with torch.no_grad():
        probs = module.predict_probabilities(image)
        rotated = module.predict_probabilities(torch.rot90(image, 1, dims=(-2, -1)))
    assert probs.shape == (2, 1, 32, 32)
    assert torch.allclose(torch.rot90(probs, 1, dims=(-2, -1)), rotated, atol=1e-5)


def test_bad_module_settings_are_rejected() -> None:
    with pytest.raises(ValueError, match="threshold"):
        EvalConfig(threshold=1.0)
    with pytest.raises(ValueError, match="layer_decay"):
        OptimConfig(layer_decay=0.0)
    with pytest.raises(ValueError, match="freeze_encoder_epochs"):
        OptimConfig(freeze_encoder_epochs=-1)
    with pytest.raises(ValueError, match="warmup_fraction"):
        OptimConfig(warmup_fraction=1.0)
    with pytest.raises(ValueError, match="window"):
        EvalConfig(window="triangle")
    with pytest.raises(ValueError, match="stitch_stride"):
        EvalConfig(stitch_stride=0)


def flat_hparams(hparams: dict) -> dict:
    """Grouped hyperparameters in the flat layout InkModule saved before its settings were grouped."""
    flat = {k: v for k, v in hparams.items() if k not in SETTINGS_GROUPS}
    for group in SETTINGS_GROUPS:
        value = hparams.get(group)
        flat.update(value if isinstance(value, dict) else dataclasses.asdict(value))
    return flat


def test_a_checkpoint_with_flat_hyperparameters_loads(tmp_path) -> None:
    """A checkpoint saved before the settings were grouped (flat ``encoder``, ``lr``, ...) loads, settings and all."""
    net = NetConfig(**TINY_NET, depth_pool="max")
    module = InkModule(num_slices=4, net=net, optim=OptimConfig(lr=2e-3), eval=EvalConfig(tta=True, threshold=0.3))
    assert set(module.hparams) == {"num_slices", "compile", "channels_last", "init_weights", *SETTINGS_GROUPS}
    trainer = _trainer(max_epochs=1, limit_train_batches=1, limit_val_batches=1)
    trainer.fit(module, datamodule=TinyFragments())
    new = tmp_path / "new.ckpt"
    trainer.save_checkpoint(new)
    checkpoint = load_checkpoint(new)  # weights-only: the settings dataclasses are on the allow-list
    assert checkpoint["hyper_parameters"]["eval"] == EvalConfig(tta=True, threshold=0.3)
    checkpoint["hyper_parameters"] = flat_hparams(checkpoint["hyper_parameters"])
    assert checkpoint["hyper_parameters"]["depth_pool"] == "max" and "net" not in checkpoint["hyper_parameters"]
    old = tmp_path / "old.ckpt"
    torch.save(checkpoint, old)
    for path in (new, old):
        loaded = InkModule.load_from_checkpoint(path)
        assert loaded.net_config == net and loaded.optim_config.lr == 2e-3 and loaded.eval_config.threshold == 0.3
        assert loaded.val_threshold == module.val_threshold
        assert all(torch.equal(v, module.state_dict()[k]) for k, v in loaded.state_dict().items())
    assert shapeless_hparams(checkpoint["hyper_parameters"]) == {"num_slices": 4, "net.depth_pool": "max"}
    assert shapeless_hparams(module.hparams) == {"num_slices": 4, "net.depth_pool": "max"}


@pytest.mark.parametrize(
    "config",
    [
        TINY,
        {"num_slices": 4, "net": NetConfig(encoder="resnet10t", out_indices=[1, 2, 3], decoder_channels=[32, 16])},
    ],
    ids=["tiny3d", "resnet10t"],
)
def test_tiny_model_overfits_a_fixed_batch(config: dict) -> None:
    volume, label = _pattern(4, 64, 64, seed=3)
    image = torch.stack([volume[:, :32, :32], volume[:, 32:, 32:], volume[:, :32, 32:], volume[:, 32:, :32]])
    target = torch.stack([label[:32, :32], label[32:, 32:], label[:32, 32:], label[32:, :32]])[:, None]
    module = InkModule(**config)
    loss_fn = InkLoss()
    optimizer = torch.optim.AdamW(module.parameters(), lr=1e-2)
    losses = []
    for _ in range(60):
        loss = loss_fn(module(image), target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert np.mean(losses[-5:]) < 0.2 * np.mean(losses[:3]), losses[::10]
    module.eval()
    with torch.no_grad():
        accuracy = ((module(image) > 0).float() == target).float().mean().item()
    assert accuracy > 0.9
