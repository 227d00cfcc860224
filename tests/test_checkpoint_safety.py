"""Checkpoints are data, not code: a crafted checkpoint is refused in one line and its payload never runs.

A payload is a pickled object whose ``__reduce__`` asks the unpickler to call ``os.system("touch MARKER")`` (or
``exec``): ``torch.load(..., weights_only=False)`` would run it. Every way the project reads a checkpoint or weights
file is tried with one, and the marker file must never appear; checkpoints the project writes itself still load.
"""

from __future__ import annotations

import ast
import builtins
import os
import pickle
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from pytorch_lightning import Trainer
from pytorch_lightning.demos.boring_classes import BoringModel

from datamodules.augment.transforms import AugmentConfig
from datamodules.reading.label_rules import LabelConfig
from lightning_app.checkpoint_io import AtomicCheckpointIO
from lightning_app.cli import cli_main
from modules.components.ink_net import NetConfig, build_net
from modules.evaluation import EvalConfig
from modules.ink_module import InkModule
from tests.test_cli import REPO, make_data, run_script, temp_files, write_config
from utils.checkpoints import LEGACY_NAMES, SAFE_TYPES, UnsafeCheckpointError, load_checkpoint


class Payload:
    """Pickles as "call ``function(*args)``": what a crafted checkpoint carries."""

    def __init__(self, function: Any, *args: Any) -> None:
        self.function, self.args = function, args

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return self.function, self.args


def write_payload(path: Path, marker: Path, *, how: str = "zip", call: str = "os.system") -> Path:
    """A checkpoint-shaped file whose hyperparameters hold a payload that would create ``marker``."""
    payload = (
        Payload(os.system, f"touch '{marker}'")
        if call == "os.system"
        else Payload(builtins.exec, f"open({str(marker)!r}, 'w').close()")
    )
    checkpoint = {"state_dict": {}, "epoch": 0, "hyper_parameters": {"lr": 0.1, "note": payload}}
    if how == "zip":
        torch.save(checkpoint, path)
    elif how == "legacy":  # torch's pre-1.6 format: several pickles, no zip
        torch.save(checkpoint, path, _use_new_zipfile_serialization=False)
    else:  # a plain pickle (protocol 4+, framed)
        with path.open("wb") as file:
            pickle.dump(checkpoint, file, protocol=pickle.HIGHEST_PROTOCOL)
    return path


@pytest.fixture
def marker(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "MARKER"
    yield path
    assert not path.exists(), "the checkpoint's payload ran"


@pytest.fixture
def payload(tmp_path: Path, marker: Path) -> Path:
    return write_payload(tmp_path / "crafted.ckpt", marker)


@dataclass
class TinyRun:
    root: Path
    data_dir: Path
    last: Path


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TinyRun]:
    """One epoch of the tiny CLI run of test_cli.py, with every default callback (Grad-CAM included)."""
    root = tmp_path_factory.mktemp("safety")
    data_dir = make_data(root / "data")
    config = write_config(root, data_dir, max_epochs=1)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.chdir(root)
            cli = cli_main(["fit", "--config", str(config), "--test_after_fit", "false"])
        yield TinyRun(root, data_dir, Path(cli.trainer.checkpoint_callback.dirpath) / "last.ckpt")
    finally:
        torch.set_num_threads(threads)


@pytest.fixture
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return tmp_path


def assert_refused(error: BaseException, path: Path, offender: str = "posix.system") -> None:
    message = str(error)
    assert "\n" not in message
    assert str(path) in message and "not allowed" in message and offender in message, message


# ------------------------------------------------------------------------------------------- the loader


@pytest.mark.parametrize("how", ["zip", "legacy", "pickle"])
@pytest.mark.parametrize("call", ["os.system", "exec"])
def test_loader_refuses_a_payload_in_any_format(tmp_path: Path, marker: Path, how: str, call: str) -> None:
    path = write_payload(tmp_path / f"{how}.ckpt", marker, how=how, call=call)
    with pytest.raises(UnsafeCheckpointError) as error:
        load_checkpoint(path, what="pretrained_path")
    assert_refused(error.value, path, "system" if call == "os.system" else "exec")
    assert str(error.value).startswith(f"pretrained_path '{path}' holds objects that are not allowed")


def test_loader_names_unreadable_and_non_dict_files(tmp_path: Path) -> None:
    (tmp_path / "text.ckpt").write_text("not a checkpoint\n")
    with pytest.raises(ValueError, match=r"ckpt_path '.*text\.ckpt' is not a readable checkpoint") as error:
        load_checkpoint(tmp_path / "text.ckpt")
    assert not isinstance(error.value, UnsafeCheckpointError)
    torch.save([torch.zeros(2)], tmp_path / "list.pt")
    with pytest.raises(ValueError, match="holds a list, not a dict"):
        load_checkpoint(tmp_path / "list.pt")
    with pytest.raises(FileNotFoundError, match="ckpt_path '.*nope.ckpt' does not exist"):
        load_checkpoint(tmp_path / "nope.ckpt")


def test_project_settings_types_load(tmp_path: Path) -> None:
    # InkDataModule built in Python saves its AugmentConfig itself in the datamodule hyperparameters.
    augment = AugmentConfig(flip_p=0.25, depth_shift=1)
    torch.save({"state_dict": {}, "datamodule_hyper_parameters": {"augment": augment}}, tmp_path / "a.ckpt")
    assert load_checkpoint(tmp_path / "a.ckpt")["datamodule_hyper_parameters"]["augment"] == augment
    assert "datamodules.augment.transforms.AugmentConfig" in SAFE_TYPES


def test_checkpoints_saved_before_the_packages_were_cut_load(tmp_path: Path) -> None:
    """Settings types moved into sub-packages; a checkpoint naming their former modules still loads."""
    settings = {"augment": AugmentConfig(flip_p=0.25), "labels": LabelConfig(threshold=0.4), "eval": EvalConfig()}
    torch.save(settings, tmp_path / "new.ckpt")
    with zipfile.ZipFile(tmp_path / "new.ckpt") as source, zipfile.ZipFile(tmp_path / "old.ckpt", "w") as target:
        for item in source.infolist():
            data = source.read(item.filename)
            if item.filename.endswith("data.pkl"):  # protocol 2: GLOBAL "module\nname\n", renamed as saved before
                for old, new in LEGACY_NAMES.items():
                    (old_module, _, name), (new_module, _, _) = old.rpartition("."), new.rpartition(".")
                    data = data.replace(f"{new_module}\n{name}\n".encode(), f"{old_module}\n{name}\n".encode())
                assert b"datamodules.transforms\nAugmentConfig" in data and b"modules.evaluation\nEvalConfig" in data
            target.writestr(item, data)
    assert load_checkpoint(tmp_path / "old.ckpt") == settings


def test_utils_imports_no_lightning_and_resolves_the_allow_list_on_load(tmp_path: Path) -> None:
    torch.save({"augment": AugmentConfig(noise_p=0.1)}, tmp_path / "a.ckpt")
    code = (
        "import sys; from utils.checkpoints import load_checkpoint; "
        "assert not any(m.split('.')[0] in ('pytorch_lightning', 'lightning_fabric') for m in sys.modules); "
        f"print(load_checkpoint({str(tmp_path / 'a.ckpt')!r})['augment'].noise_p)"
    )
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "PYTHONPATH": str(REPO)}
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.strip() == "0.1", result.stderr


# ------------------------------------------------------------------------------------------- the CLI


@pytest.mark.parametrize("subcommand", ["predict", "test", "validate", "fit"])
def test_cli_refuses_a_crafted_ckpt_path(run: TinyRun, in_tmp: Path, payload: Path, subcommand: str) -> None:
    config = write_config(in_tmp, run.data_dir)
    with pytest.raises(UnsafeCheckpointError) as error:
        cli_main([subcommand, "--config", str(config), "--ckpt_path", str(payload)])
    assert_refused(error.value, payload)
    assert not (in_tmp / "runs").exists() and not (in_tmp / "pred").exists()


def test_script_refuses_a_crafted_ckpt_path_in_one_line(run: TinyRun, in_tmp: Path, payload: Path) -> None:
    config = write_config(in_tmp, run.data_dir)
    result = run_script("predict.py", "--config", str(config), "--ckpt_path", str(payload), cwd=in_tmp)
    assert result.returncode == 1, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in result.stderr, result.stderr
    assert f"ckpt_path '{payload}' holds objects that are not allowed" in errors[0] and "posix.system" in errors[0]


def test_cli_refuses_a_crafted_pretrained_path(run: TinyRun, in_tmp: Path, payload: Path) -> None:
    with pytest.raises(UnsafeCheckpointError) as error:
        build_net(4, NetConfig(encoder="tiny3d", pretrained_path=str(payload)))
    assert_refused(error.value, payload)
    config = write_config(in_tmp, run.data_dir)
    with pytest.raises(UnsafeCheckpointError, match="pretrained_path '.*crafted.ckpt' holds objects"):
        cli_main(["fit", "--config", str(config), "--model.net.pretrained_path", str(payload)])


# ------------------------------------------------------------------------------------------- Lightning's own loads


def test_lightning_load_through_the_plugin_is_weights_only_even_when_asked_otherwise(
    in_tmp: Path, payload: Path
) -> None:
    with pytest.raises(UnsafeCheckpointError):
        AtomicCheckpointIO().load_checkpoint(payload, weights_only=False)
    trainer = Trainer(
        accelerator="cpu", plugins=[AtomicCheckpointIO()], logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=1,
    )  # fmt: skip
    with pytest.raises(UnsafeCheckpointError) as error:
        trainer.validate(BoringModel(), ckpt_path=str(payload), weights_only=False)
    assert_refused(error.value, payload)


def test_load_from_checkpoint_is_weights_only(run: TinyRun, payload: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", raising=False)
    with pytest.raises(pickle.UnpicklingError, match="posix.system"):
        InkModule.load_from_checkpoint(payload)
    model = InkModule.load_from_checkpoint(run.last)
    assert model.net_config.encoder == "tiny3d" and model.hparams.num_slices == 12


# ------------------------------------------------------------------------------------------- our own checkpoints


def test_a_checkpoint_of_a_real_run_loads_with_every_callback_state(run: TinyRun) -> None:
    checkpoint = load_checkpoint(run.last)
    assert checkpoint["hyper_parameters"]["net"]["encoder"] == "tiny3d"
    assert checkpoint["datamodule_hyper_parameters"]["window"]["z_end"] == 16
    assert checkpoint["optimizer_states"] and checkpoint["lr_schedulers"]
    states = {key.split("{")[0]: value for key, value in checkpoint["callbacks"].items()}
    assert {"LatestCheckpoint", "InkEarlyStopping", "GradCAMCallback"} <= set(states)
    assert states["GradCAMCallback"]["tiles"]["image"].ndim == 4 and states["GradCAMCallback"]["tiles"]["fragment"]
    assert isinstance(states["InkEarlyStopping"]["best_score"], torch.Tensor)
    assert states["LatestCheckpoint"]["last_model_path"].endswith("last.ckpt")


def test_a_real_run_resumes_through_the_safe_loads(run: TinyRun, in_tmp: Path) -> None:
    config = write_config(in_tmp, run.data_dir, max_epochs=2)
    args = ["fit", "--config", str(config), "--ckpt_path", str(run.last), "--test_after_fit", "false"]
    cli = cli_main(args)  # Lightning reads the checkpoint again, through AtomicCheckpointIO
    assert cli.trainer.current_epoch == 2
    assert temp_files(in_tmp) == []


# ------------------------------------------------------------------------------------------- the code itself


def _weights_only_calls(tree: ast.AST) -> Iterator[tuple[ast.Call, bool, object]]:
    """Every ``torch.load(...)`` and every call passing ``weights_only=``: (call, is torch.load, the value)."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            keyword = next((k for k in node.keywords if k.arg == "weights_only"), None)
            value = keyword.value.value if keyword is not None and isinstance(keyword.value, ast.Constant) else None
            func = node.func
            is_torch_load = isinstance(func, ast.Attribute) and func.attr == "load"
            is_torch_load = is_torch_load and isinstance(func.value, ast.Name) and func.value.id == "torch"
            if is_torch_load or keyword is not None:
                yield node, is_torch_load, value


def test_no_code_loads_a_checkpoint_with_weights_only_false() -> None:
    offenders = []
    for folder in ("callbacks", "datamodules", "lightning_app", "modules", "scripts", "tests", "utils"):
        for path in sorted((REPO / folder).rglob("*.py")):
            for call, is_torch_load, value in _weights_only_calls(ast.parse(path.read_text(), str(path))):
                # torch.load must say weights_only=True; only this file passes weights_only=False (to show that it
                # is not honoured).
                if (is_torch_load and value is not True) or (value is not True and path != Path(__file__)):
                    offenders.append(f"{path.relative_to(REPO)}:{call.lineno}")
    assert offenders == [], offenders
