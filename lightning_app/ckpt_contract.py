"""A checkpoint's contract as CLI defaults: ``validate``, ``test`` and ``predict`` work from ``--ckpt_path`` alone.

A checkpoint holds the model's settings (``hyper_parameters``: the net, loss, eval and optim groups) and the data
module's (``datamodule_hyper_parameters``). Before the command line is parsed, the CLI makes them the parser's
defaults, so the model is rebuilt as it was trained and reads its input as it was trained, while anything given on
the command line or in a ``--config`` still wins. A setting that changes the input depth against the weights is then
refused in one line by `lightning_app.ckpt_path.check_checkpoint_matches`.

The data settings come in two kinds:

- `INPUT_KEYS`: what the model's input depends on (slice window, reversed fragments, tile size, normalisation, and
  the slices read around the window, which the normalisation's percentiles span), and what its labels meant (the
  label threshold and unknown level, so a test scores against the ink the model was trained on). Always taken.
- `FOLDER_KEYS`: the checkpoint's own data folder and its splits. Taken only when the run reads that same folder:
  fragment names of the training data mean nothing in another one.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jsonargparse import ArgumentParser

from datamodules.settings import group_flat_settings
from modules.ink_module import SETTINGS_GROUPS, group_legacy_hparams
from utils.checkpoints import load_checkpoint

INPUT_KEYS = (
    "window.z_start",
    "window.z_end",
    "window.z_window",
    "window.reverse_depth",
    "tiles.tile_size",
    "tiles.eval_stride",
    "storage.normalization",
    "storage.intensity_percentiles",
    "augment.enabled",
    "augment.depth_shift",
    "labels.threshold",
    "labels.unknown",
)
FOLDER_KEYS = (
    "data_dir",
    "splits.train_fragments",
    "splits.val_fragments",
    "splits.test_fragments",
    "splits.folds",
    "splits.val_fold",
    "splits.test_fold",
    "splits.split_gap",
    "storage.cache_dir",
)


@dataclass(frozen=True)
class CheckpointContract:
    """Parser defaults read from one checkpoint, by dotted key (``model.net.encoder``, ``data.window.z_start``).

    Attributes:
        model: the model's settings groups.
        data_input: the data settings the model's input depends on.
        data_folder: the checkpoint's data folder and splits (``data.data_dir`` among them).
    """

    model: dict[str, Any] = field(default_factory=dict)
    data_input: dict[str, Any] = field(default_factory=dict)
    data_folder: dict[str, Any] = field(default_factory=dict)

    @property
    def data_dir(self) -> str | None:
        """The folder the checkpoint's model was trained on, when it says."""
        return self.data_folder.get("data.data_dir")


def _plain(value: Any) -> Any:
    """A settings dataclass (saved by a run built in Python) as the dict a LightningCLI run saves."""
    return dataclasses.asdict(value) if dataclasses.is_dataclass(value) and not isinstance(value, type) else value


def _lookup(settings: Mapping[str, Any], dotted: str) -> tuple[bool, Any]:
    """``(found, value)`` of a dotted key in nested settings (dicts or dataclasses)."""
    value: Any = settings
    for part in dotted.split("."):
        value = _plain(value)
        if not isinstance(value, Mapping) or part not in value:
            return False, None
        value = value[part]
    return True, _plain(value)


def read_contract(path: str | Path) -> CheckpointContract:
    """The model and data defaults a checkpoint carries (empty for what it does not say).

    Raises:
        ValueError: the file holds code or is not a readable checkpoint (`utils.checkpoints.load_checkpoint`).
    """
    checkpoint = load_checkpoint(path, what="ckpt_path")
    hparams = group_legacy_hparams(checkpoint.get("hyper_parameters") or {})
    model = {
        f"model.{group}.{key}": _plain(value)
        for group in SETTINGS_GROUPS
        for key, value in (_plain(hparams.get(group)) or {}).items()
    }
    # A checkpoint of an earlier version holds the data settings flat (z_start, tile_size ...): grouped first.
    data = group_flat_settings(checkpoint.get("datamodule_hyper_parameters") or {})

    def pick(keys: tuple[str, ...]) -> dict[str, Any]:
        found = {key: _lookup(data, key) for key in keys}
        return {f"data.{key}": value for key, (present, value) in found.items() if present}

    return CheckpointContract(model=model, data_input=pick(INPUT_KEYS), data_folder=pick(FOLDER_KEYS))


def set_defaults(parser: ArgumentParser, defaults: Mapping[str, Any]) -> None:
    """Sets each default the parser knows; a setting this version of the project no longer has is skipped."""
    for key, value in defaults.items():
        try:
            parser.set_defaults({key: value})
        except KeyError:
            continue


def same_folder(a: str | Path | None, b: str | Path | None) -> bool:
    """Whether two data folders are the same (relative paths taken from the current folder)."""
    return a is not None and b is not None and Path(a).resolve() == Path(b).resolve()
