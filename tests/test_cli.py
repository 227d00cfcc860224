"""End-to-end tests of the application layer: ``cli_main`` and the scripts driving fit, test and predict as users do.

One tiny run (two 96 × 96 synthetic fragments of 20 slices, a ``tiny3d`` model, 2 steps per epoch) is trained once
per module and reused by the tests that only read its outputs; every test runs in its own temporary folder.
"""

from __future__ import annotations

import csv
import math
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tifffile
import torch
import yaml
from PIL import Image
from pytorch_lightning.accelerators import CPUAccelerator
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from datamodules.synthetic import make_demo_data
from lightning_app.checkpoint_io import AtomicCheckpointIO
from lightning_app.cli import InkCLI, cli_main, expand_shorthands
from modules.ink_module import InkModule
from tests.test_ink_module import flat_hparams
from utils.checkpoints import load_checkpoint
from utils.rle import rle_decode

REPO = Path(__file__).resolve().parents[1]
BATCH_SIZE = 8
SAMPLES_PER_EPOCH = 16
STEPS_PER_EPOCH = SAMPLES_PER_EPOCH // BATCH_SIZE


def write_config(root: Path, data_dir: Path, *, max_epochs: int = 2, logger: str = "TensorBoardLogger") -> Path:
    """A tiny fit/test/predict config whose every output goes under ``root``; returns its path.

    Args:
        root: folder of the config, the run folders (``runs/ink/version_*``) and the predictions (``pred``).
        data_dir: the fragments (see `make_data`).
        max_epochs: training epochs.
        logger: a logger class of ``pytorch_lightning.loggers`` writing under ``root / "runs"``.
    """
    config = {
        "seed_everything": 0,
        "trainer": {
            "accelerator": "cpu",
            "devices": 1,
            "max_epochs": max_epochs,
            "log_every_n_steps": 1,
            "enable_progress_bar": False,
            "enable_model_summary": False,
            "logger": {
                "class_path": f"pytorch_lightning.loggers.{logger}",
                "init_args": {"save_dir": str(root / "runs"), "name": "ink"},
            },
        },
        "model": {"net": {"encoder": "tiny3d", "decoder_channels": [16, 8, 8]}, "optim": {"lr": 0.003}},
        "data": {
            "data_dir": str(data_dir),
            "train_fragments": ["frag1", "frag2"],
            "val_fragments": ["frag2"],
            "test_fragments": ["frag2"],
            "folds": 3,
            "val_fold": 1,
            "test_fold": 2,
            "z_start": 4,
            "z_end": 16,
            "tile_size": 32,
            "stride": 16,
            "eval_stride": 16,
            "samples_per_epoch": SAMPLES_PER_EPOCH,
            "batch_size": BATCH_SIZE,
            "num_workers": 0,
        },
        "cam": {"every_n_epochs": 1, "num_tiles": 2, "candidate_tiles": 8},
        "prediction_writer": {"output_dir": str(root / "pred")},
    }
    path = root / "tiny.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def make_data(folder: Path) -> Path:
    """Two labelled 96 × 96 × 20 synthetic fragments, ``frag1`` and ``frag2``."""
    make_demo_data(folder, num_fragments=2, height=96, width=96, depth=20)
    return folder


def scalars(log_dir: Path) -> dict[str, list[float]]:
    """Every scalar of every TensorBoard event file in ``log_dir``, by tag."""
    found: dict[str, list[float]] = {}
    for events in sorted(log_dir.glob("events.out.tfevents.*")):
        accumulator = EventAccumulator(str(events), size_guidance={"scalars": 0})
        accumulator.Reload()
        for tag in accumulator.Tags()["scalars"]:
            found.setdefault(tag, []).extend(e.value for e in accumulator.Scalars(tag))
    return found


def temp_files(root: Path) -> list[Path]:
    """Leftovers of atomic writes (``.<name>.<random>.tmp``) anywhere under ``root``."""
    return [p for p in root.rglob("*") if p.name.endswith(".tmp")]


@dataclass
class TrainedRun:
    """The outputs of the module's one training run."""

    root: Path
    data_dir: Path
    config: Path
    cli: InkCLI
    log_dir: Path
    best: Path
    last: Path


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """The models are tiny: more threads only contend for the CI machine's cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_data(tmp_path_factory.mktemp("data") / "fragments")


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> TrainedRun:
    """``fit`` for 2 epochs (then the automatic test of the best checkpoint), run from its own folder."""
    root = tmp_path_factory.mktemp("trained")
    config = write_config(root, data_dir)
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        cli = cli_main(["fit", "--config", str(config)])
    checkpoint = cli.trainer.checkpoint_callback
    return TrainedRun(
        root=root,
        data_dir=data_dir,
        config=config,
        cli=cli,
        log_dir=Path(cli.trainer.log_dir),
        best=Path(checkpoint.best_model_path),
        last=Path(checkpoint.dirpath) / "last.ckpt",
    )


@pytest.fixture
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Runs the test from ``tmp_path``, so that nothing relative lands in the repository."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def count_calls(monkeypatch: pytest.MonkeyPatch, name: str) -> list[tuple[int, int]]:
    """Wraps ``InkModule.<name>`` to record ``(current_epoch, global_step)`` at each call."""
    calls: list[tuple[int, int]] = []
    original = getattr(InkModule, name)

    def wrapped(self: InkModule, *args: Any, **kwargs: Any) -> Any:
        calls.append((self.current_epoch, self.global_step))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(InkModule, name, wrapped)
    return calls


# ------------------------------------------------------------------------------------------------ fit


def test_fit_saves_last_and_best_checkpoint(trained: TrainedRun) -> None:
    checkpoint = trained.cli.trainer.checkpoint_callback
    assert (checkpoint.monitor, checkpoint.mode) == ("val/f05_best", "max")
    assert isinstance(trained.cli.trainer.strategy.checkpoint_io, AtomicCheckpointIO)
    files = sorted(p.name for p in trained.last.parent.glob("*.ckpt"))
    assert "last.ckpt" in files and trained.best.name in files and len(files) == 2, files
    assert trained.best.name.startswith("epoch") and "f05_" in trained.best.name
    # The best file holds the highest val/f05_best of the run, and it is a complete, loadable checkpoint.
    val_f05 = scalars(trained.log_dir)["val/f05_best"]
    assert len(val_f05) == 2
    assert float(checkpoint.best_model_score) == pytest.approx(max(val_f05), abs=1e-6)
    best = load_checkpoint(trained.best)
    last = load_checkpoint(trained.last)
    assert last["global_step"] == 2 * STEPS_PER_EPOCH and last["epoch"] == 1
    assert best["hyper_parameters"]["net"]["encoder"] == "tiny3d"
    assert best["hyper_parameters"]["num_slices"] == 12  # linked from the data module's z range
    assert 0.0 <= best["val_threshold"] <= 1.0  # the threshold its validation chose, applied at test
    assert temp_files(trained.root) == []


def test_fit_logs_losses_scores_and_lr_per_param_group(trained: TrainedRun) -> None:
    found = scalars(trained.log_dir)
    for tag in ("train/loss_step", "train/loss_epoch", "val/loss", "val/f05", "val/ap", "test/f05"):
        assert tag in found, f"{tag} not logged; tags: {sorted(found)}"
    assert len(found["train/loss_step"]) == 2 * STEPS_PER_EPOCH
    assert all(math.isfinite(v) for v in found["train/loss_step"])
    # LearningRateMonitor logs one curve per named parameter group, every step.
    optimizer = trained.cli.trainer.optimizers[0]
    groups = [g["name"] for g in optimizer.param_groups]
    assert {"head", "decoder"} <= set(groups)
    lr_tags = sorted(t for t in found if t.startswith("lr"))
    assert lr_tags == sorted(f"lr/{g}" for g in groups)
    assert len(found["lr/head"]) == 2 * STEPS_PER_EPOCH
    assert max(found["lr/head"]) <= 0.003 + 1e-9


def test_fit_saves_a_config_that_names_the_run(trained: TrainedRun) -> None:
    saved = yaml.safe_load((trained.log_dir / "config.yaml").read_text())
    assert saved["model"]["net"]["encoder"] == "tiny3d"
    assert saved["data"]["window"]["z_start"] == 4 and saved["data"]["window"]["z_end"] == 16
    assert saved["trainer"]["max_epochs"] == 2
    assert saved["cam"]["every_n_epochs"] == 1


def test_fit_tests_the_best_checkpoint_afterwards(trained: TrainedRun) -> None:
    results = trained.cli.test_results
    assert 0.0 <= results["test/f05"] <= 1.0
    assert "test/frag2/f05" in results and "test/ap" in results
    # It is the best checkpoint that was tested, not the last weights.
    assert trained.cli.trainer.ckpt_path == str(trained.best)


def test_saved_config_replays(trained: TrainedRun, in_tmp: Path) -> None:
    saved = trained.log_dir / "config.yaml"
    cli = cli_main(
        [
            "fit",
            "--config",
            str(saved),
            "--max_epochs",
            "1",
            "--test_after_fit",
            "false",
            "--trainer.logger.init_args.save_dir",
            str(in_tmp / "replay"),
        ]
    )
    assert cli.trainer.current_epoch == 1 and cli.trainer.global_step == STEPS_PER_EPOCH
    assert dict(cli.model.hparams) == dict(trained.cli.model.hparams)
    assert cli.datamodule.hparams.data_dir == str(trained.data_dir)
    assert not hasattr(cli, "test_results")
    replayed = yaml.safe_load((Path(cli.trainer.log_dir) / "config.yaml").read_text())
    assert Path(cli.trainer.log_dir).is_relative_to(in_tmp / "replay")
    assert replayed["model"] == yaml.safe_load(saved.read_text())["model"]


# ------------------------------------------------------------------------------------------------ test / predict


def test_test_subcommand_scores_the_checkpoint(trained: TrainedRun, in_tmp: Path, capsys: Any) -> None:
    cli = cli_main(["test", "--config", str(trained.config), "--ckpt_path", str(trained.best)])
    metrics = {k: float(v) for k, v in cli.trainer.callback_metrics.items()}
    # The same checkpoint on the same fragments gives the score the fit's own test gave.
    assert metrics["test/f05"] == pytest.approx(trained.cli.test_results["test/f05"], abs=1e-6)
    assert metrics["test/frag2/f05"] == pytest.approx(metrics["test/f05"], abs=1e-6)
    out = capsys.readouterr().out
    assert "frag2" in out and "all fragments" in out


def test_command_line_model_settings_beat_the_checkpoint_hparams(trained: TrainedRun, in_tmp: Path) -> None:
    # Lightning's CLI would silently replace them with the hyperparameters saved in the checkpoint.
    args = ["--ckpt_path", str(trained.best), "--model.eval.tta", "true", "--model.eval.threshold", "0.3"]
    cli = cli_main(["test", "--config", str(trained.config), *args, "--trainer.limit_test_batches", "1"])
    assert cli.model.eval_config.tta is True and cli.model.eval_config.threshold == 0.3


@pytest.mark.parametrize("subcommand", ["validate", "test", "predict"])
def test_a_checkpoint_with_flat_hyperparameters_loads(trained: TrainedRun, in_tmp: Path, subcommand: str) -> None:
    """A checkpoint saved before the model's settings were grouped (flat ``encoder``, ``lr``, ...) still loads."""
    checkpoint = load_checkpoint(trained.best)
    grouped = checkpoint["hyper_parameters"]
    assert grouped["net"]["encoder"] == "tiny3d" and grouped["optim"]["lr"] == 0.003  # LightningCLI saves plain dicts
    checkpoint["hyper_parameters"] = flat_hparams(grouped)
    assert checkpoint["hyper_parameters"]["encoder"] == "tiny3d" and "_instantiator" in checkpoint["hyper_parameters"]
    old = in_tmp / "old.ckpt"
    torch.save(checkpoint, old)
    config = write_config(in_tmp, trained.data_dir)
    limit = f"--trainer.limit_{'val' if subcommand == 'validate' else subcommand}_batches"
    cli = cli_main([subcommand, "--config", str(config), "--ckpt_path", str(old), limit, "1"])
    assert cli.model.net_config.encoder == "tiny3d"
    assert list((in_tmp / "pred").glob("*_prediction.tif")) if subcommand == "predict" else cli.model.last_eval_maps
    loaded = InkModule.load_from_checkpoint(old)
    assert loaded.net_config == cli.model.net_config and loaded.optim_config.lr == 0.003
    assert all(torch.equal(v, checkpoint["state_dict"][k]) for k, v in loaded.state_dict().items())


def test_predict_writes_pngs_and_submission(trained: TrainedRun, in_tmp: Path) -> None:
    unlabelled = in_tmp / "unlabelled"
    make_demo_data(unlabelled, num_fragments=1, height=80, width=112, depth=20)  # not square: catches H/W swaps
    (unlabelled / "frag1" / "inklabels.png").unlink()
    out = in_tmp / "out"
    cli = cli_main(
        [
            "predict",
            "--config",
            str(trained.config),
            "--ckpt_path",
            str(trained.best),
            "--data.predict_dir",
            str(unlabelled),
            "--prediction_writer.output_dir",
            str(out),
        ]
    )
    names = ["frag1_mask.png", "frag1_prediction.png", "frag1_prediction.tif", "submission.csv"]
    assert sorted(p.name for p in out.iterdir()) == names  # no band files or temporary files left
    prob = np.asarray(Image.open(out / "frag1_prediction.png"))
    np.testing.assert_array_equal(tifffile.imread(out / "frag1_prediction.tif"), prob)
    mask = np.asarray(Image.open(out / "frag1_mask.png"))
    assert prob.shape == mask.shape == (80, 112)
    assert set(np.unique(mask).tolist()) <= {0, 255}
    with open(out / "submission.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["Id", "Predicted"] and len(rows) == 2 and rows[1][0] == "frag1"
    np.testing.assert_array_equal(rle_decode(rows[1][1], (80, 112)), mask == 255)
    # The mask follows the probabilities and the module's threshold (0.5) inside the papyrus.
    threshold = cli.model.eval_config.threshold
    assert not np.any((mask == 255) & (prob < round(255 * threshold) - 1))
    assert temp_files(in_tmp) == [] and temp_files(unlabelled) == []


# ------------------------------------------------------------------------------------------------ shorthands


def test_expand_shorthands() -> None:
    args = ["fit", "--accelerator", "gpu", "--devices=2", "--precision", "bf16-mixed", "--max_steps=5"]
    assert expand_shorthands([*args, "--trainer.strategy", "ddp", "--model.lr", "1"]) == [
        "fit",
        "--trainer.accelerator",
        "gpu",
        "--trainer.devices=2",
        "--trainer.precision",
        "bf16-mixed",
        "--trainer.max_steps=5",
        "--trainer.strategy",
        "ddp",
        "--model.lr",
        "1",
    ]
    # A value that looks like a flag name is left alone; only option names are expanded.
    assert expand_shorthands(["--data.data_dir", "devices"]) == ["--data.data_dir", "devices"]


def test_shorthand_flags_set_the_trainer_and_bf16_fits_on_cpu(data_dir: Path, in_tmp: Path) -> None:
    config = write_config(in_tmp, data_dir, max_epochs=3)
    cli = cli_main(
        [
            "fit",
            "--config",
            str(config),
            "--accelerator",
            "cpu",
            "--devices",
            "1",
            "--max_epochs",
            "1",
            "--precision",
            "bf16-mixed",
            "--test_after_fit",
            "false",
        ]
    )
    trainer = cli.trainer
    assert isinstance(trainer.accelerator, CPUAccelerator) and trainer.num_devices == 1
    assert trainer.precision == "bf16-mixed" and trainer.max_epochs == 1
    assert trainer.global_step == STEPS_PER_EPOCH
    assert math.isfinite(float(trainer.callback_metrics["train/loss_epoch"]))
    assert "val/f05" in trainer.callback_metrics
    saved = yaml.safe_load((Path(trainer.log_dir) / "config.yaml").read_text())
    assert saved["trainer"]["precision"] == "bf16-mixed" and saved["trainer"]["max_epochs"] == 1


def test_shorthand_flags_with_equals(data_dir: Path, in_tmp: Path) -> None:
    config = write_config(in_tmp, data_dir, max_epochs=3)
    cli = cli_main(
        [
            "fit",
            "--config",
            str(config),
            "--precision=32-true",
            "--max_steps=1",
            "--devices=1",
            "--test_after_fit=false",
        ]
    )
    assert cli.trainer.precision == "32-true" and cli.trainer.max_steps == 1
    assert cli.trainer.global_step == 1


def test_fit_without_config_uses_the_demo_config(in_tmp: Path, capsys: Any) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["fit", "--print_config"])
    assert exit_info.value.code == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["data"]["demo"]["enabled"] is True
    # the CPU recipe beneath
    assert printed["data"]["tiles"]["ink_ratio"] is None and printed["ema"]["enabled"] is False
    assert list(in_tmp.iterdir()) == []


def test_fit_with_only_a_data_dir_uses_the_cpu_recipe_and_every_fragment(
    data_dir: Path, in_tmp: Path, capsys: Any
) -> None:
    """The demo's fragment names and demo data never apply to a user's own folder."""
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["fit", "--data.data_dir", str(data_dir), "--print_config"])
    assert exit_info.value.code == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["data"]["demo"]["enabled"] is False
    assert printed["data"]["splits"]["train_fragments"] is None and printed["data"]["splits"]["val_fragments"] is None
    assert printed["data"]["storage"]["normalization"] == "fragment" and printed["model"]["loss"]["pos_weight"] == 1.0
    assert printed["early_stopping"]["patience_samples"] == 40960


@pytest.mark.parametrize("flag", ["-c", "--config"])
def test_a_config_replaces_the_demo_config(data_dir: Path, in_tmp: Path, capsys: Any, flag: str) -> None:
    config = write_config(in_tmp, data_dir)
    with pytest.raises(SystemExit):
        cli_main(["fit", flag, str(config), "--print_config"])
    printed = yaml.safe_load(capsys.readouterr().out)
    # Nothing of demo.yaml underneath: the data module's own defaults where tiny.yaml says nothing.
    assert printed["data"]["demo"]["enabled"] is False and printed["data"]["demo"]["fragments"] == 2
    assert printed["data"]["data_dir"] == str(data_dir)


# ------------------------------------------------------------------------------------------------ resume


def test_resume_from_last_continues_epoch_step_and_optimizer(
    data_dir: Path, in_tmp: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    config = write_config(in_tmp, data_dir, max_epochs=1)
    first = cli_main(["fit", "--config", str(config), "--test_after_fit", "false"])
    assert first.trainer.global_step == STEPS_PER_EPOCH
    last = Path(first.trainer.checkpoint_callback.dirpath) / "last.ckpt"
    capsys.readouterr()

    steps = count_calls(monkeypatch, "training_step")
    cli = cli_main(
        ["fit", "--config", str(config), "--max_epochs", "2", "--ckpt_path", "last", "--test_after_fit=false"]
    )
    assert f"resuming from {last}" in capsys.readouterr().out
    # Only the second epoch ran, starting where the first stopped.
    assert steps == [(1, STEPS_PER_EPOCH + i) for i in range(STEPS_PER_EPOCH)]
    trainer = cli.trainer
    assert trainer.current_epoch == 2 and trainer.global_step == 2 * STEPS_PER_EPOCH
    # Optimizer and scheduler states were restored, not rebuilt: their step counts continue.
    scheduler = trainer.lr_scheduler_configs[0].scheduler
    assert scheduler.last_epoch == 2 * STEPS_PER_EPOCH
    optimizer = trainer.optimizers[0]
    adam_steps = {int(state["step"]) for state in optimizer.state.values()}
    assert adam_steps == {2 * STEPS_PER_EPOCH}


def test_last_checkpoint_holds_the_latest_epoch_when_no_best_is_saved(data_dir: Path, in_tmp: Path) -> None:
    # Top-k checkpoints only after epoch 1 (0-based): epoch 2 saves no best file, yet last.ckpt must follow it.
    config = write_config(in_tmp, data_dir, max_epochs=3)
    cli = cli_main(["fit", "--config", str(config), "--checkpoint.every_n_epochs", "2", "--test_after_fit", "false"])
    folder = Path(cli.trainer.checkpoint_callback.dirpath)
    assert sorted(p.name for p in folder.iterdir())[0].startswith("epoch001-")
    last = load_checkpoint(folder / "last.ckpt")
    assert (last["epoch"], last["global_step"]) == (2, 3 * STEPS_PER_EPOCH)


def test_resume_last_without_an_earlier_run_fails(data_dir: Path, in_tmp: Path) -> None:
    config = write_config(in_tmp, data_dir)
    with pytest.raises(FileNotFoundError, match="ckpt_path 'last': no last.ckpt under"):
        cli_main(["fit", "--config", str(config), "--ckpt_path", "last"])


# ------------------------------------------------------------------------------------------------ bad input


def test_unknown_config_key_exits_2_naming_the_key(data_dir: Path, in_tmp: Path, capsys: Any) -> None:
    config = write_config(in_tmp, data_dir)
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["fit", "--config", str(config), "--model.not_a_key", "1"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "--model.not_a_key" in errors[0]
    assert len(err.splitlines()) <= 4, err  # a one-line usage, not every option
    assert not (in_tmp / "runs").exists()


def test_unknown_disabled_callback_is_rejected(data_dir: Path, in_tmp: Path) -> None:
    config = write_config(in_tmp, data_dir)
    with pytest.raises(ValueError, match=r"disable_callbacks names unknown callback\(s\) \['camm'\]"):
        cli_main(["fit", "--config", str(config), "--disable_callbacks", "[camm]"])


def test_missing_checkpoint_fails_before_any_output(trained: TrainedRun, in_tmp: Path) -> None:
    config = write_config(in_tmp, trained.data_dir)
    with pytest.raises(FileNotFoundError, match="ckpt_path 'nope.ckpt' does not exist"):
        cli_main(["test", "--config", str(config), "--ckpt_path", "nope.ckpt"])
    assert sorted(p.name for p in in_tmp.iterdir()) == ["tiny.yaml"]


@pytest.mark.parametrize(
    ("override", "detail"),
    [
        (["--model.net.encoder", "resnet10t", "--model.net.decoder_channels", "[16, 16, 8, 8]"], "missing"),
        (["--data.z_end", "14"], "num_slices=12"),  # tiny3d takes any depth: no tensor changes shape
        (["--model.net.depth_pool", "max"], "depth_pool='mean'"),
    ],
    ids=["encoder", "z_range", "depth_pool"],
)
def test_checkpoint_of_another_model_is_rejected(
    trained: TrainedRun, in_tmp: Path, override: list[str], detail: str
) -> None:
    config = write_config(in_tmp, trained.data_dir)
    with pytest.raises(ValueError, match="belongs to another model") as error:
        cli_main(["test", "--config", str(config), "--ckpt_path", str(trained.best), *override])
    assert detail in str(error.value) and str(trained.best) in str(error.value)
    assert not (in_tmp / "runs").exists()


def test_predict_on_a_folder_without_fragments(trained: TrainedRun, in_tmp: Path) -> None:
    empty = in_tmp / "empty"
    empty.mkdir()
    config = write_config(in_tmp, trained.data_dir)
    args = ["predict", "--config", str(config), "--ckpt_path", str(trained.best), "--data.predict_dir", str(empty)]
    with pytest.raises(FileNotFoundError, match="no fragment found in data_dir"):
        cli_main(args)
    assert not list(in_tmp.glob("pred/*"))


def test_unwritable_prediction_folder_fails_before_predicting(
    trained: TrainedRun, in_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    blocker = in_tmp / "a_file"
    blocker.write_text("not a folder")
    config = write_config(in_tmp, trained.data_dir)
    steps = count_calls(monkeypatch, "predict_step")
    with pytest.raises(NotADirectoryError, match="InkPredictionWriter output_dir"):
        cli_main(
            [
                "predict",
                "--config",
                str(config),
                "--ckpt_path",
                str(trained.best),
                "--data.predict_dir",
                str(trained.data_dir),
                "--prediction_writer.output_dir",
                str(blocker / "pred"),
            ]
        )
    assert steps == []
    assert blocker.read_text() == "not a folder"
    assert not (in_tmp / "runs").exists()  # it failed before the run folder was made
    assert temp_files(in_tmp) == []


def run_script(script: str, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    env.pop("INK_DEBUG", None)
    return subprocess.run(
        [sys.executable, str(REPO / "scripts" / script), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize(
    ("script", "args", "code", "message"),
    [
        ("fit.py", ["--model.not_a_key", "1"], 2, "unrecognized arguments: --model.not_a_key 1"),
        ("test.py", ["--ckpt_path", "missing.ckpt"], 1, "ckpt_path 'missing.ckpt' does not exist"),
        ("predict.py", ["--prediction_writer.output_dir", "a_file/pred"], 1, "InkPredictionWriter output_dir"),
    ],
    ids=["unknown_key", "missing_ckpt", "unwritable_output"],
)
def test_scripts_report_bad_input_in_one_line(
    trained: TrainedRun, in_tmp: Path, script: str, args: list[str], code: int, message: str
) -> None:
    (in_tmp / "a_file").write_text("not a folder")
    config = write_config(in_tmp, trained.data_dir)
    ckpt = [] if "--ckpt_path" in args or script == "fit.py" else ["--ckpt_path", str(trained.best)]
    result = run_script(script, "--config", str(config), *ckpt, *args, cwd=in_tmp)
    assert result.returncode == code, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0], result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.splitlines()) < 12, result.stderr
    assert not (in_tmp / "runs").exists() and temp_files(in_tmp) == []


def test_torch_augmentation_compile_and_channels_last_from_the_command_line(
    data_dir: Path, in_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    compiled: list[object] = []

    def recording_compile(fn: Any, **kwargs: Any) -> Any:
        compiled.append(fn)
        return fn

    monkeypatch.setattr(torch, "compile", recording_compile)
    config = write_config(in_tmp, data_dir, max_epochs=3)
    cli = cli_main(
        [
            "fit",
            "--config",
            str(config),
            "--data.augment.backend=torch",
            "--model.compile=true",
            "--model.channels_last=true",
            "--model.net.encoder=resnet10t",  # channels_last is for 2-D encoders
            "--model.net.decoder_channels=[16, 8, 8, 8]",
            "--max_steps=2",
            "--test_after_fit=false",
        ]
    )
    assert cli.datamodule.augment.backend == "torch" and cli.model.hparams.compile is True
    assert cli.model.runner.channels_last and compiled  # the training step went through torch.compile
    assert cli.trainer.global_step == 2 and math.isfinite(float(cli.trainer.callback_metrics["train/loss_step"]))
