"""InkEMA (callbacks/ema.py): weights averaged for validation, checkpoints and the test after fit; off by default."""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint

from callbacks.ema import InkEMA
from modules.ink_module import InkModule
from modules.optimization import OptimConfig
from tests.test_ink_module import TINY, TinyFragments
from utils.checkpoints import load_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")


def _params(state: dict) -> dict:
    return {k: v for k, v in state.items() if k.startswith("net.") and v.is_floating_point()}


def _fit(tmp_path, ema: InkEMA, epochs: int, batches: int) -> tuple[pl.Trainer, InkModule, TinyFragments]:
    """Fits a tiny model with `ema` and a checkpoint callback writing ``last.ckpt`` under ``tmp_path``."""
    data = TinyFragments()
    module = InkModule(**TINY, optim=OptimConfig(lr=1e-2))
    trainer = pl.Trainer(
        accelerator="cpu",
        max_epochs=epochs,
        limit_train_batches=batches,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        callbacks=[ema, ModelCheckpoint(dirpath=tmp_path, monitor="val/f05_best", mode="max", save_last=True)],
    )
    trainer.fit(module, datamodule=data)
    return trainer, module, data


def test_ema_weights_are_validated_checkpointed_and_tested(tmp_path):
    trainer, module, data = _fit(tmp_path, InkEMA(enabled=True, decay=0.5), epochs=2, batches=4)
    saved = load_checkpoint(tmp_path / "last.ckpt")
    averaged, raw = _params(saved["state_dict"]), _params(saved["current_model_state"])
    assert averaged.keys() == raw.keys()
    assert any(not torch.equal(averaged[k], raw[k]) for k in averaged)  # the average is not the raw weights
    # After fitting the model holds the average (the last update happened after the last save)...
    own = _params(module.state_dict())
    assert any(not torch.equal(own[k], raw[k]) for k in own)
    # ... and the test after fit, on the same Trainer, runs on the checkpoint's averaged weights.
    trainer.test(module, datamodule=data, ckpt_path=str(tmp_path / "last.ckpt"))
    tested = _params(module.state_dict())
    assert all(torch.equal(tested[k], averaged[k]) for k in averaged)


def test_ema_off_by_default_changes_nothing(tmp_path):
    _, module, _ = _fit(tmp_path, InkEMA(), epochs=1, batches=2)
    saved = load_checkpoint(tmp_path / "last.ckpt")
    assert "current_model_state" not in saved
    own = _params(module.state_dict())
    assert all(torch.equal(own[k], v) for k, v in _params(saved["state_dict"]).items())


def test_ema_settings_are_checked():
    with pytest.raises(ValueError, match="decay"):
        InkEMA(decay=1.0)
    with pytest.raises(ValueError, match="update_every_n_steps"):
        InkEMA(update_every_n_steps=0)
