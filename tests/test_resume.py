"""Resuming a fit (``--ckpt_path last`` or a path) continues its own run folder with the callbacks' state intact."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import pytest
import torch

from callbacks.latest_checkpoint import LatestCheckpoint
from lightning_app.cli import cli_main
from modules.ink_module import InkModule
from tests.test_cli import STEPS_PER_EPOCH, make_data, one_thread, write_config  # noqa: F401 - one_thread: fixture

NO_IMAGES = ["--disable_callbacks", "[cam, eval_images]", "--test_after_fit", "false"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_data(tmp_path_factory.mktemp("data") / "fragments")


def _callback_state(trainer: Any) -> dict[str, Any]:
    """What the checkpoint and early-stopping callbacks know of the run's best so far."""
    checkpoint, stopping = trainer.checkpoint_callback, trainer.early_stopping_callback
    return {
        "best_model_score": float(checkpoint.best_model_score),
        "best_model_path": checkpoint.best_model_path,
        "best_k_models": {path: float(score) for path, score in checkpoint.best_k_models.items()},
        "kth_value": float(checkpoint.kth_value),
        "last_model_path": checkpoint.last_model_path,
        "early_stopping_best": float(stopping.best_score),
        "early_stopping_wait": stopping.wait_count,
    }


def test_resume_continues_the_run_folder_with_best_and_early_stopping_state(
    data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    config = write_config(tmp_path, data_dir, max_epochs=2)
    first = cli_main(["fit", "--config", str(config), *NO_IMAGES])
    run_folder = Path(first.trainer.log_dir)
    saved = _callback_state(first.trainer)
    assert Path(saved["best_model_path"]).parent == run_folder / "checkpoints"

    restored: dict[str, Any] = {}
    original = InkModule.on_train_start

    def record(self: InkModule) -> None:  # after the checkpoint is restored, before the resumed epoch trains
        restored.update(_callback_state(self.trainer))
        original(self)

    monkeypatch.setattr(InkModule, "on_train_start", record)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        second = cli_main(["fit", "--config", str(config), "--max_epochs", "3", "--ckpt_path", "last", *NO_IMAGES])
    assert not [w for w in caught if "won't be reloaded" in str(w.message)]
    trainer = second.trainer
    assert trainer.current_epoch == 3 and trainer.global_step == 3 * STEPS_PER_EPOCH
    # The same run folder (logger version), not version_1.
    assert Path(trainer.log_dir) == run_folder
    assert sorted(p.name for p in run_folder.parent.iterdir()) == [run_folder.name]
    # The checkpoint callback's best-k state and early stopping's state were restored, then carried on.
    assert restored == saved
    checkpoint = trainer.checkpoint_callback
    assert float(checkpoint.best_model_score) >= saved["best_model_score"]
    assert Path(checkpoint.best_model_path).parent == run_folder / "checkpoints"
    assert Path(checkpoint.best_model_path).is_file()
    assert float(trainer.early_stopping_callback.best_score) == pytest.approx(float(checkpoint.best_model_score))


def test_checkpoint_state_survives_a_relative_spelling_of_the_same_folder(tmp_path: Path) -> None:
    folder = tmp_path / "runs" / "ink" / "version_0" / "checkpoints"
    folder.mkdir(parents=True)
    state = {
        "dirpath": str(folder),
        "best_model_score": torch.tensor(0.7),
        "best_model_path": str(folder / "best.ckpt"),
        "best_k_models": {str(folder / "best.ckpt"): torch.tensor(0.7)},
        "kth_best_model_path": str(folder / "best.ckpt"),
        "kth_value": torch.tensor(0.7),
        "last_model_path": str(folder / "last.ckpt"),
    }
    callback = LatestCheckpoint(monitor="val/f05_best", mode="max")
    callback.dirpath = str(tmp_path / "other")
    with pytest.warns(UserWarning, match="won't be reloaded"):
        callback.load_state_dict(state)  # another folder: Lightning's rule, only best_model_path
    assert callback.best_model_score is None

    callback = LatestCheckpoint(monitor="val/f05_best", mode="max")
    callback.dirpath = str(folder / ".." / "checkpoints")  # the same folder, spelled differently
    callback.load_state_dict(state)
    assert float(callback.best_model_score) == pytest.approx(0.7)
    assert callback.last_model_path == str(folder / "last.ckpt")


def test_evaluation_leaves_the_checkpoint_state_alone(tmp_path: Path) -> None:
    callback = LatestCheckpoint(monitor="val/f05_best", mode="max")
    callback._stage = "test"
    callback.dirpath = str(tmp_path / "elsewhere")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        callback.load_state_dict({"dirpath": str(tmp_path), "best_model_path": "x", "best_model_score": None})
    assert callback.best_model_path == ""
