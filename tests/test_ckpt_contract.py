"""A checkpoint carries its contract: ``validate``/``test``/``predict`` work from ``--ckpt_path`` alone.

One tiny run is trained once (slices 4-16, tile 32, a ``tiny3d`` model: nothing like the defaults), and its best
checkpoint is then used without its config.yaml.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from datamodules.synthetic import make_demo_data
from lightning_app.ckpt_contract import read_contract
from lightning_app.cli import cli_main
from tests.test_cli import make_data, one_thread, write_config  # noqa: F401 - one_thread: fixture
from utils.checkpoints import load_checkpoint


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_data(tmp_path_factory.mktemp("data") / "fragments")


@pytest.fixture(scope="module")
def best(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> Path:
    """The best checkpoint of a 1-epoch fit of `write_config`'s tiny run."""
    root = tmp_path_factory.mktemp("trained")
    config = write_config(root, data_dir, max_epochs=1)
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        cli = cli_main(["fit", "--config", str(config), "--test_after_fit", "false", "--disable_callbacks", "[cam]"])
    return Path(cli.trainer.checkpoint_callback.best_model_path)


@pytest.fixture(scope="module")
def new_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A labelled fragment under a name the training run never saw, in a folder of its own."""
    folder = tmp_path_factory.mktemp("new") / "fragments"
    make_demo_data(folder, num_fragments=1, height=80, width=192, depth=20)  # 5 bands of 38 px
    (folder / "frag1").rename(folder / "scroll_a")
    return folder


@pytest.fixture
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return tmp_path


def printed_config(capsys: Any, args: list[str]) -> dict[str, Any]:
    """The config ``--print_config`` prints for ``args``."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        cli_main([*args, "--print_config"])
    assert exit_info.value.code == 0
    return yaml.safe_load(capsys.readouterr().out)


def test_read_contract(best: Path, data_dir: Path) -> None:
    contract = read_contract(best)
    assert contract.model["model.net.encoder"] == "tiny3d"
    assert contract.model["model.net.decoder_channels"] == [16, 8, 8]
    assert "model.num_slices" not in contract.model  # linked from the data's slice window
    assert contract.data_input["data.window.z_start"] == 4 and contract.data_input["data.window.z_end"] == 16
    assert contract.data_input["data.tiles.tile_size"] == 32 and contract.data_input["data.augment.depth_shift"] == 2
    assert contract.data_folder["data.splits.test_fragments"] == ["frag2"]
    assert contract.data_dir == str(data_dir)


def test_predict_from_the_checkpoint_alone_on_new_data(best: Path, new_data: Path, in_tmp: Path) -> None:
    cli = cli_main(["predict", "--ckpt_path", str(best), "--data.data_dir", str(new_data)])
    assert (in_tmp / "predictions" / "scroll_a_prediction.png").is_file()
    assert cli.model.net_config.encoder == "tiny3d" and cli.model.hparams.num_slices == 12
    settings = cli.datamodule.settings
    window, tiles = settings.window, settings.tiles
    assert (window.z_start, window.z_end, tiles.tile_size, tiles.eval_stride) == (4, 16, 32, 16)


def test_test_from_the_checkpoint_alone_uses_its_own_data_and_splits(
    best: Path, data_dir: Path, in_tmp: Path, capsys: Any
) -> None:
    cli = cli_main(["test", "--ckpt_path", str(best)])
    splits = cli.datamodule.settings.splits
    assert cli.datamodule.hparams.data_dir == str(data_dir)
    assert splits.test_fragments == ["frag2"] and splits.test_fold == 2
    assert "frag2" in capsys.readouterr().out


def test_the_splits_of_the_checkpoint_stay_with_its_own_folder(best: Path, new_data: Path, in_tmp: Path) -> None:
    cli = cli_main(["test", "--ckpt_path", str(best), "--data.data_dir", str(new_data)])
    settings = cli.datamodule.settings
    splits = settings.splits
    assert splits.train_fragments is None and splits.test_fragments is None and splits.folds == 5
    assert settings.window.z_start == 4 and settings.tiles.tile_size == 32
    assert "test/scroll_a/f05" in cli.trainer.callback_metrics


def test_explicit_settings_beat_the_checkpoint(best: Path, new_data: Path, in_tmp: Path, capsys: Any) -> None:
    (in_tmp / "mine.yaml").write_text(yaml.safe_dump({"data": {"eval_stride": 8}}))
    args = ["predict", "--ckpt_path", str(best), "--data.data_dir", str(new_data), "--config", "mine.yaml"]
    printed = printed_config(capsys, [*args, "--model.eval.threshold", "0.3", "--data.tile_size", "48"])
    assert printed["model"]["net"]["encoder"] == "tiny3d" and printed["model"]["eval"]["threshold"] == 0.3
    assert printed["data"]["tiles"]["tile_size"] == 48 and printed["data"]["tiles"]["eval_stride"] == 8
    assert printed["data"]["window"]["z_start"] == 4 and printed["data"]["data_dir"] == str(new_data)


def test_another_input_depth_is_a_one_line_error(best: Path, new_data: Path, in_tmp: Path) -> None:
    args = ["predict", "--ckpt_path", str(best), "--data.data_dir", str(new_data), "--data.z_end", "20"]
    with pytest.raises(ValueError, match=r"trained with num_slices=12, this run has num_slices=16; the slice window"):
        cli_main(args)
    assert not (in_tmp / "predictions").exists()


def test_a_checkpoint_without_data_settings_still_gives_its_model_settings(
    best: Path, in_tmp: Path, capsys: Any
) -> None:
    """Checkpoints from before the contract: the model as trained, the data settings from the command line."""
    checkpoint = load_checkpoint(best)
    del checkpoint["datamodule_hyper_parameters"], checkpoint["datamodule_hparams_name"]
    torch.save(checkpoint, in_tmp / "old.ckpt")
    printed = printed_config(capsys, ["predict", "--ckpt_path", "old.ckpt"])
    assert printed["model"]["net"]["encoder"] == "tiny3d"
    assert printed["data"]["window"]["z_start"] == 15 and printed["data"]["data_dir"] == "data/demo"  # defaults
