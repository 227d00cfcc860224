"""AtomicCheckpointIO (lightning_app/checkpoint_io.py): a checkpoint file appears complete or not at all."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import torch

from lightning_app import checkpoint_io
from lightning_app.checkpoint_io import AtomicCheckpointIO


def make_checkpoint(value: float = 1.0) -> dict[str, Any]:
    return {"state_dict": {"w": torch.full((3, 4), value)}, "epoch": 3, "global_step": 12}


def failing_save(exception: BaseException):
    """A torch.save that writes part of the file and then fails, as a full disk or a kill would."""

    def save(obj: Any, f: Any, *args: Any, **kwargs: Any) -> None:
        if isinstance(f, (str, os.PathLike)):
            Path(f).write_bytes(b"PK\x03\x04 half a checkpoint")
        else:
            f.write(b"PK\x03\x04 half a checkpoint")
            f.flush()
        raise exception

    return save


def test_writes_a_loadable_checkpoint_creating_the_folder(tmp_path: Path) -> None:
    io = AtomicCheckpointIO()
    target = tmp_path / "runs" / "checkpoints" / "last.ckpt"
    io.save_checkpoint(make_checkpoint(), target)
    loaded = io.load_checkpoint(target)
    assert loaded["epoch"] == 3 and loaded["global_step"] == 12
    torch.testing.assert_close(loaded["state_dict"]["w"], torch.ones(3, 4))
    assert [p.name for p in target.parent.iterdir()] == ["last.ckpt"]


def test_overwrites_an_existing_checkpoint(tmp_path: Path) -> None:
    io = AtomicCheckpointIO()
    target = tmp_path / "last.ckpt"
    io.save_checkpoint(make_checkpoint(1.0), target)
    io.save_checkpoint(make_checkpoint(2.0), str(target))  # a str path too, as Lightning passes it
    torch.testing.assert_close(io.load_checkpoint(target)["state_dict"]["w"], torch.full((3, 4), 2.0))
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]


@pytest.mark.parametrize("exception", [OSError(28, "No space left on device"), KeyboardInterrupt()])
def test_a_failed_save_leaves_no_file_and_no_temp_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, exception: BaseException
) -> None:
    monkeypatch.setattr(checkpoint_io.torch, "save", failing_save(exception))
    with pytest.raises(type(exception)):
        AtomicCheckpointIO().save_checkpoint(make_checkpoint(), tmp_path / "epoch001.ckpt")
    assert list(tmp_path.iterdir()) == []


def test_a_failed_save_keeps_the_previous_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    io = AtomicCheckpointIO()
    target = tmp_path / "last.ckpt"
    io.save_checkpoint(make_checkpoint(1.0), target)
    before = target.read_bytes()
    monkeypatch.setattr(checkpoint_io.torch, "save", failing_save(OSError(28, "No space left on device")))
    with pytest.raises(OSError, match="No space left"):
        io.save_checkpoint(make_checkpoint(2.0), target)
    assert target.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]


def test_storage_options_are_rejected(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="AtomicCheckpointIO does not take storage_options"):
        AtomicCheckpointIO().save_checkpoint(make_checkpoint(), tmp_path / "a.ckpt", storage_options={"x": 1})
    assert list(tmp_path.iterdir()) == []
