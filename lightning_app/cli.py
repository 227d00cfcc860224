"""InkCLI: the LightningCLI of the project, its default callbacks and Trainer shorthand flags.

``cli_main(args)`` is what ``scripts/fit.py``, ``test.py`` and ``predict.py`` call, and what tests call: every
LightningCLI form works (``--config a.yaml --config b.yaml``, ``--model.x``, ``--data.y``, ``--print_config``),
plus the shorthands ``--accelerator``, ``--devices``, ``--precision``, ``--strategy``, ``--max_epochs``,
``--max_steps``, ``--num_nodes`` meaning the same as ``--trainer.X``.
"""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # no network here: skip albumentations' version check

from pytorch_lightning import Trainer  # noqa: E402
from pytorch_lightning.callbacks import LearningRateMonitor  # noqa: E402
from pytorch_lightning.cli import LightningArgumentParser, LightningCLI  # noqa: E402
from pytorch_lightning.utilities import rank_zero_info, rank_zero_only, rank_zero_warn  # noqa: E402

from callbacks.cam import GradCAMCallback  # noqa: E402
from callbacks.early_stopping import InkEarlyStopping  # noqa: E402
from callbacks.ema import InkEMA  # noqa: E402
from callbacks.eval_images import EvalImageLogger  # noqa: E402
from callbacks.latest_checkpoint import LatestCheckpoint  # noqa: E402
from callbacks.prediction_writer import InkPredictionWriter  # noqa: E402
from datamodules.ink_datamodule import InkDataModule  # noqa: E402
from lightning_app.checkpoint_io import AtomicCheckpointIO  # noqa: E402
from lightning_app.ckpt_contract import read_contract, same_folder, set_defaults  # noqa: E402
from lightning_app.ckpt_path import check_checkpoint_matches  # noqa: E402
from lightning_app.legacy_args import regroup_data_args
from lightning_app.run_dir import (  # noqa: E402
    DEFAULT_SAVE_DIR,
    find_last_checkpoint,
    follow_default_root_dir,
    resume_in_own_folder,
    runs_root,
)
from modules.ink_module import InkModule  # noqa: E402
from utils.atomic import ensure_writable_dir  # noqa: E402
from utils.checkpoints import allow_project_types  # noqa: E402

# Lightning's own weights-only loads in this process (LightningModule.load_from_checkpoint) accept the project's types.
allow_project_types()

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
CPU_CONFIG = CONFIG_DIR / "cpu.yaml"
DEMO_CONFIG = CONFIG_DIR / "demo.yaml"
# `fit` with no --config: the CPU recipe, plus the demo data unless a data folder is given.
DEMO_CONFIGS = (CPU_CONFIG, DEMO_CONFIG)
TRAINER_SHORTHANDS = ("accelerator", "devices", "precision", "strategy", "max_epochs", "max_steps", "num_nodes")
# Default callbacks, each with its config group; `--disable_callbacks [cam, early_stopping]` turns some off.
DEFAULT_CALLBACKS = ("checkpoint", "early_stopping", "ema", "lr_monitor", "cam", "eval_images", "prediction_writer")
# Subcommands whose model and data settings default to those saved in --ckpt_path.
EVAL_SUBCOMMANDS = ("validate", "test", "predict")


say = rank_zero_only(print)


class InkArgumentParser(LightningArgumentParser):
    """LightningArgumentParser whose errors show a one-line usage rather than all ~170 options above the message."""

    def print_usage(self, file: IO[str] | None = None) -> None:
        (file or sys.stdout).write(f"usage: {self.prog} [-h] [-c CONFIG] [--print_config] [--section.key VALUE ...]\n")


class InkCLI(LightningCLI):
    """LightningCLI over InkModule and InkDataModule with the project's default callbacks and logger."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments("data.num_slices", "model.num_slices", apply_on="instantiate")
        parser.add_lightning_class_args(LatestCheckpoint, "checkpoint")
        parser.set_defaults(
            {
                # F0.5 at the threshold validation chooses (the one test applies): F0.5 at a fixed 0.5 ranks a model
                # that predicts ink nearly everywhere above one that has begun to separate ink from papyrus.
                "checkpoint.monitor": "val/f05_best",
                "checkpoint.mode": "max",
                "checkpoint.save_last": True,
                "checkpoint.filename": "epoch{epoch:03d}-f05_{val/f05_best:.4f}",
                "checkpoint.auto_insert_metric_name": False,
            }
        )
        # Checked after each validation: a run cut short by max_steps ends an epoch with no score.
        parser.add_lightning_class_args(InkEarlyStopping, "early_stopping")
        parser.add_lightning_class_args(InkEMA, "ema")
        parser.add_lightning_class_args(LearningRateMonitor, "lr_monitor")
        parser.set_defaults({"lr_monitor.logging_interval": "step"})
        parser.add_lightning_class_args(GradCAMCallback, "cam")
        parser.add_lightning_class_args(EvalImageLogger, "eval_images")
        parser.add_lightning_class_args(InkPredictionWriter, "prediction_writer")
        parser.add_argument(
            "--disable_callbacks",
            type=list[str],
            default=[],
            help=f"default callbacks to leave out, of {list(DEFAULT_CALLBACKS)}",
        )
        parser.add_argument(
            "--test_after_fit", type=bool, default=True, help="fit only: test the best checkpoint after fitting"
        )

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        """Parses the command line with the run folder and ``--ckpt_path`` settled before anything is built.

        - ``--trainer.default_root_dir`` moves the logger's default ``runs`` folder (`follow_default_root_dir`).
        - ``--ckpt_path last`` becomes the newest ``last.ckpt`` under the logger's folder, and a resumed ``fit``
          continues that checkpoint's run folder (`resume_in_own_folder`).
        - ``validate``/``test``/``predict`` take the model and data settings saved in ``--ckpt_path`` as defaults
          (`lightning_app.ckpt_contract`): the command line and ``--config`` still win.
        """
        subcommand = args[0] if isinstance(args, list) and args else None
        if subcommand not in self.subcommands():
            super().parse_arguments(parser, args)
            return
        # A first look without --print_config (which prints and exits while parsing) finds the checkpoint.
        probe = [a for a in args if a != "--print_config" and not a.startswith("--print_config=")]
        config = parser.parse_args(probe)[subcommand]
        follow_default_root_dir(config)
        ckpt_path = config.get("ckpt_path")
        if ckpt_path == "last":
            ckpt_path = str(find_last_checkpoint(runs_root(config)))
            say(f"resuming from {ckpt_path}")
        if subcommand in EVAL_SUBCOMMANDS and ckpt_path not in (None, "best") and Path(ckpt_path).is_file():
            self._use_checkpoint_settings(parser, subcommand, probe, ckpt_path)
        super().parse_arguments(parser, args)
        config = self.config[subcommand]
        follow_default_root_dir(config)
        if ckpt_path not in (None, "best"):
            config.ckpt_path = ckpt_path
            if subcommand == "fit":
                resume_in_own_folder(config, ckpt_path)

    def _use_checkpoint_settings(
        self, parser: LightningArgumentParser, subcommand: str, probe: list[str], ckpt_path: str
    ) -> None:
        """Makes the checkpoint's model and data settings the subcommand's defaults; its data folder and splits only
        when the run reads that same folder."""
        contract = read_contract(ckpt_path)
        subparser = self._subcommand_parsers[subcommand]
        set_defaults(subparser, {**contract.model, **contract.data_input})
        if contract.data_dir is None:
            return
        set_defaults(subparser, {"data.data_dir": contract.data_dir})
        if same_folder(parser.parse_args(probe)[subcommand].data.data_dir, contract.data_dir):
            set_defaults(subparser, contract.data_folder)

    def _parse_ckpt_path(self) -> None:
        """Keeps the model settings of the config and command line.

        Lightning would overwrite them with the hyperparameters stored in ``--ckpt_path``, silently dropping explicit
        ones such as ``--model.eval.tta true`` or ``--model.eval.threshold 0.3``; the checkpoint's settings are the
        defaults instead (`parse_arguments`). A checkpoint of another architecture is rejected by
        `check_checkpoint_matches`.
        """

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        config = self.config[self.subcommand] if self.subcommand else self.config
        disabled = set(config.get("disable_callbacks") or [])
        unknown = disabled - set(DEFAULT_CALLBACKS)
        if unknown:
            raise ValueError(
                f"disable_callbacks names unknown callback(s) {sorted(unknown)}; known: {list(DEFAULT_CALLBACKS)}"
            )
        if self.subcommand != "predict":
            disabled.add("prediction_writer")
        if self.subcommand != "fit":
            disabled.add("ema")  # test/validate/predict use the averaged weights a fit saved
        keys = [k for k in self._parser(self.subcommand).callback_keys if k not in disabled]
        extra_callbacks = [self._get(self.config_init, key) for key in keys]
        trainer_config = {**self._get(self.config_init, "trainer", default={}), **kwargs}
        plugins = trainer_config.get("plugins") or []
        plugins = plugins if isinstance(plugins, list) else [plugins]
        trainer_config["plugins"] = [*plugins, AtomicCheckpointIO()]
        return self._instantiate_trainer(trainer_config, extra_callbacks)

    def _check_ckpt_path(self) -> None:
        """Checks the checkpoint (``last`` was resolved while parsing) fits the model."""
        ckpt = self.config_init[self.subcommand].get("ckpt_path")
        if ckpt not in (None, "best"):
            check_checkpoint_matches(ckpt, self.model)
            if self.subcommand == "fit" and getattr(self.model, "init_weights", None):
                # A resumed fit continues its own weights: the file a new fit started from is not read (nor needed).
                rank_zero_info(f"resuming from {ckpt}: model.init_weights ({self.model.init_weights}) is not loaded")
                self.model.init_weights = None
        elif ckpt is None and self.subcommand in ("test", "predict", "validate"):
            rank_zero_warn(f"{self.subcommand} without --ckpt_path: the model has its initial (untrained) weights")

    before_fit = before_validate = before_test = _check_ckpt_path

    def before_predict(self) -> None:
        """Checks the checkpoint and the prediction folder before the run folder or any prediction is made."""
        self._check_ckpt_path()
        for writer in self.trainer.callbacks:
            if isinstance(writer, InkPredictionWriter):
                ensure_writable_dir(writer.output_dir, "InkPredictionWriter output_dir")
        # The writer reads the stitched maps; keeping every batch's output would cost GBs on a real fragment.
        config = self.config_init["predict"]
        if config.get("return_predictions") is None:
            config["return_predictions"] = False

    def after_fit(self) -> None:
        """Tests the best checkpoint and tells where the outputs are."""
        trainer = self.trainer
        if trainer.fast_dev_run or trainer.interrupted:
            return
        checkpoint = trainer.checkpoint_callback
        best = checkpoint.best_model_path if checkpoint is not None else ""
        if self.config_init["fit"].get("test_after_fit"):
            results = trainer.test(self.model, datamodule=self.datamodule, ckpt_path=best or None, verbose=False)
            self.test_results = results[0] if results else {}
            say(format_test_table(self.test_results))
        say(
            f"\nlogs and config.yaml: {trainer.log_dir}\n"
            f"checkpoints: {checkpoint.dirpath if checkpoint else '-'} (best: {best or '-'})\n"
            f"TensorBoard: tensorboard --logdir {Path(trainer.log_dir).parent}"
        )

    def after_test(self) -> None:
        results = {k: float(v) for k, v in self.trainer.callback_metrics.items() if k.startswith("test/")}
        say(format_test_table(results))

    def after_predict(self) -> None:
        writer = next((c for c in self.trainer.callbacks if isinstance(c, InkPredictionWriter)), None)
        if writer is not None:
            say(f"predictions written to {writer.output_dir}")


def format_test_table(results: dict[str, float]) -> str:
    """A per-fragment F0.5 table from ``test/<fragment>/f05`` metrics, with the overall scores."""
    rows = sorted((k.split("/")[1], v) for k, v in results.items() if k.count("/") == 2 and k.endswith("/f05"))
    lines = ["", f"{'fragment':<24}{'test F0.5':>10}"]
    lines += [f"{name:<24}{float(value):>10.4f}" for name, value in rows]
    for key, label in (
        ("test/f05", "all fragments"),
        ("test/f05_val_threshold", "F0.5 at val threshold"),
        ("test/val_threshold", "val threshold"),
        ("test/ap", "average precision"),
        ("test/f05_oracle", "oracle F0.5 (test-tuned)"),
    ):
        if key in results:
            lines.append(f"{label:<24}{float(results[key]):>10.4f}")
    return "\n".join(lines)


def expand_shorthands(args: Sequence[str]) -> list[str]:
    """``--accelerator gpu`` → ``--trainer.accelerator gpu`` (also the ``--flag=value`` form)."""
    out = []
    for arg in args:
        name, sep, value = arg.partition("=")
        if name.startswith("--") and name[2:] in TRAINER_SHORTHANDS:
            out.append(f"--trainer.{name[2:]}{sep}{value}")
        else:
            out.append(arg)
    return out


def _option(args: Sequence[str], name: str) -> str | None:
    for i, arg in enumerate(args):
        if arg == name and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    return None


def cli_main(args: Sequence[str] | None = None) -> InkCLI:
    """Runs ``fit``, ``validate``, ``test`` or ``predict`` as the command line would, and returns the CLI.

    ``fit`` with no ``--config`` uses the CPU recipe ``lightning_app/configs/cpu.yaml``, and with no
    ``--data.data_dir`` either, ``demo.yaml`` on top of it (synthetic demo fragments made in ``data/demo``).
    After ``fit``, the best checkpoint is tested (``--test_after_fit false`` skips it).
    """
    # The args passed here are the command line (expanded); sys.argv is kept for DDP's launcher, not parsed twice.
    warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended", category=UserWarning)
    argv = regroup_data_args(expand_shorthands(list(sys.argv[1:] if args is None else args)))
    if argv and argv[0] == "fit" and _option(argv, "--config") is None and _option(argv, "-c") is None:
        configs = [CPU_CONFIG] if _option(argv, "--data.data_dir") is not None else list(DEMO_CONFIGS)
        argv = [argv[0], *(a for c in configs for a in ("--config", str(c))), *argv[1:]]
    return InkCLI(
        InkModule,
        InkDataModule,
        args=argv,
        parser_class=InkArgumentParser,
        save_config_kwargs={"overwrite": True},
        trainer_defaults={
            "logger": {
                "class_path": "pytorch_lightning.loggers.TensorBoardLogger",
                "init_args": {"save_dir": DEFAULT_SAVE_DIR, "name": "ink"},
            },
        },
        auto_configure_optimizers=False,
    )
