"""lightning_app/run_dir.py: ``--trainer.default_root_dir`` decides where a run writes; ``last`` is found there."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml
from jsonargparse import Namespace

from lightning_app.cli import cli_main
from lightning_app.run_dir import find_last_checkpoint, follow_default_root_dir, resume_in_own_folder, runs_root
from tests.test_cli import make_data, one_thread, write_config  # noqa: F401 - one_thread: fixture


def _config(save_dir: str = "runs", default_root_dir: str | None = None, version: str | None = None) -> Namespace:
    init_args = Namespace(save_dir=save_dir, name="ink", version=version)
    logger = Namespace(class_path="TensorBoardLogger", init_args=init_args)
    return Namespace(trainer=Namespace(default_root_dir=default_root_dir, logger=logger))


def test_default_root_dir_moves_the_default_save_dir_only() -> None:
    config = _config(default_root_dir="/x")
    follow_default_root_dir(config)
    assert config.trainer.logger.init_args.save_dir == "/x" and runs_root(config) == Path("/x/ink")
    explicit = _config(save_dir="/mine", default_root_dir="/x")
    follow_default_root_dir(explicit)
    assert explicit.trainer.logger.init_args.save_dir == "/mine"
    untouched = _config()
    follow_default_root_dir(untouched)
    assert runs_root(untouched) == Path("runs/ink")
    no_logger = Namespace(trainer=Namespace(default_root_dir="/x", logger=False))
    follow_default_root_dir(no_logger)
    assert runs_root(no_logger) == Path("/x")


def test_find_last_checkpoint_takes_the_newest(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="ckpt_path 'last': no last.ckpt under"):
        find_last_checkpoint(tmp_path)
    for i, version in enumerate(["version_1", "version_0"]):
        folder = tmp_path / "ink" / version / "checkpoints"
        folder.mkdir(parents=True)
        (folder / "last.ckpt").write_bytes(b"")
        os.utime(folder / "last.ckpt", (1000 + i, 1000 + i))
    assert find_last_checkpoint(tmp_path / "ink") == tmp_path / "ink" / "version_0" / "checkpoints" / "last.ckpt"


def test_resume_in_own_folder(tmp_path: Path) -> None:
    ckpt = tmp_path / "ink" / "version_3" / "checkpoints" / "epoch1.ckpt"
    config = _config(save_dir=str(tmp_path))
    assert resume_in_own_folder(config, ckpt) == "version_3"
    assert config.trainer.logger.init_args.version == "version_3"
    assert resume_in_own_folder(_config(save_dir=str(tmp_path / "other")), ckpt) is None  # another logger's tree
    assert resume_in_own_folder(_config(save_dir=str(tmp_path), version="v9"), ckpt) is None  # explicit version
    assert resume_in_own_folder(_config(save_dir=str(tmp_path)), tmp_path / "mine.ckpt") is None


def test_fit_writes_logs_and_checkpoints_under_default_root_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    data_dir = make_data(tmp_path / "fragments")
    config_path = write_config(tmp_path, data_dir, max_epochs=1)
    config = yaml.safe_load(config_path.read_text())
    del config["trainer"]["logger"]  # the project's default logger, save_dir runs
    config_path.write_text(yaml.safe_dump(config))
    args = ["fit", "--config", str(config_path), "--trainer.default_root_dir", "elsewhere", "--test_after_fit", "false"]
    cli = cli_main([*args, "--disable_callbacks", "[cam, eval_images]"])
    run_folder = (tmp_path / "elsewhere" / "ink" / "version_0").resolve()
    assert Path(cli.trainer.log_dir).resolve() == run_folder
    assert (run_folder / "config.yaml").is_file() and (run_folder / "checkpoints" / "last.ckpt").is_file()
    assert not (tmp_path / "runs").exists()
    saved = yaml.safe_load((run_folder / "config.yaml").read_text())
    assert saved["trainer"]["logger"]["init_args"]["save_dir"] == "elsewhere"  # the replay writes there too
