"""Checkpoints are data, not code: every checkpoint and weights file the project reads is loaded here.

``torch.load(..., weights_only=False)`` runs whatever a pickle asks for (a ``__reduce__`` payload such as
``os.system("...")`` runs while loading), so a checkpoint from someone else could run code on this machine.
`load_checkpoint` uses torch's weights-only unpickler instead: tensors, numbers, strings, ``None``, lists, tuples,
dicts, sets, ``OrderedDict``, ``torch.Size``/``dtype``/``device`` and the few project types in `SAFE_TYPES`. Any other
global (a function, a class) is refused before anything is built, with one line naming the file and the global.

The allow-list is kept here by dotted name and imported only when a checkpoint is loaded, so ``utils`` imports
neither Lightning nor the modules that own the types (no import cycles).
"""

from __future__ import annotations

import importlib
import os
import pickle
import pickletools
import re
import warnings
import zipfile
from functools import lru_cache
from pathlib import Path
from typing import IO, Any

import torch

# The project's own types that checkpoints may hold, beyond torch's defaults. A hyperparameter saved with
# `save_hyperparameters` or a callback's `state_dict` needing another type must be added here (and be plain data:
# building it must have no side effects).
SAFE_TYPES: tuple[str, ...] = (
    # InkDataModule(augment=AugmentConfig(...), labels=LabelConfig(...)) built in Python saves the dataclasses in
    # `datamodule_hyper_parameters` (LightningCLI saves the config's plain dict instead).
    "datamodules.augment.transforms.AugmentConfig",
    "datamodules.reading.label_rules.LabelConfig",
    # InkModule's settings groups, likewise (a LightningCLI run saves them as plain dicts).
    "modules.components.ink_net.NetConfig",
    "modules.losses.LossConfig",
    "modules.evaluation.steps.EvalConfig",
    "modules.optimization.OptimConfig",
)
# Where those types lived before the packages were cut by concern: checkpoints saved then name them so.
LEGACY_NAMES: dict[str, str] = {
    "datamodules.transforms.AugmentConfig": "datamodules.augment.transforms.AugmentConfig",
    "datamodules.label_rules.LabelConfig": "datamodules.reading.label_rules.LabelConfig",
    "modules.evaluation.EvalConfig": "modules.evaluation.steps.EvalConfig",
}

# How torch's weights-only unpickler names the global it refused (torch 2.6 to 2.14 wording).
_REFUSED_GLOBAL = (
    re.compile(r"GLOBAL (\S+) was not an allowed global"),
    re.compile(r"unsupported GLOBAL (\S+) whose module"),
    re.compile(r"reduce for unrecognized function (\S+)"),
)


class UnsafeCheckpointError(ValueError):
    """A checkpoint or weights file holds objects (functions, classes) the safe loader does not build."""


def _resolve(dotted: str) -> type:
    module, _, name = dotted.rpartition(".")
    return getattr(importlib.import_module(module), name)


@lru_cache(maxsize=1)
def _resolve_safe_types() -> tuple[type, ...]:
    return tuple(_resolve(dotted) for dotted in SAFE_TYPES)


def allow_project_types() -> tuple[type, ...]:
    """Adds `SAFE_TYPES` (and their `LEGACY_NAMES`) to torch's weights-only allow-list for this process.

    Process-wide (``torch.serialization.add_safe_globals``; idempotent), so Lightning's own weights-only loads,
    such as ``LightningModule.load_from_checkpoint``, accept the project's types too.

    Returns:
        The types.
    """
    types = _resolve_safe_types()
    legacy = [(_resolve(new), old) for old, new in LEGACY_NAMES.items()]
    torch.serialization.add_safe_globals([*types, *legacy])
    return types


def load_checkpoint(
    path: str | os.PathLike[str] | IO[bytes],
    *,
    what: str = "ckpt_path",
    map_location: Any = "cpu",
) -> dict[str, Any]:
    """Loads a ``.ckpt``/``.pt``/``.pth`` file as data, with torch's weights-only unpickler and `SAFE_TYPES`.

    Args:
        path: the file (or an open binary file).
        what: the setting that named the file, for messages (``ckpt_path``, ``pretrained_path``).
        map_location: passed to ``torch.load``; default: every tensor on the CPU.

    Returns:
        The checkpoint's top-level dict.

    Raises:
        FileNotFoundError: no such file.
        UnsafeCheckpointError: the file holds objects that are not allowed (nothing of it was run or built).
        ValueError: the file is not a readable PyTorch checkpoint, or its top level is not a dict.
    """
    name = os.fspath(path) if isinstance(path, (str, os.PathLike)) else getattr(path, "name", "<stream>")
    if isinstance(path, (str, os.PathLike)) and not Path(path).is_file():
        raise FileNotFoundError(f"{what} '{name}' does not exist")
    allow_project_types()
    try:
        # weights_only=True explicitly: TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD only overrides calls that leave it unset.
        with warnings.catch_warnings():  # a plain pickle.dump file: torch warns before refusing or reading it
            warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
            checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        refused = _refused_globals(str(err), path)
        if refused:
            raise UnsafeCheckpointError(
                f"{what} '{name}' holds objects that are not allowed in a checkpoint ({', '.join(refused)}); "
                "it was not loaded and nothing in it was run (checkpoints may hold only tensors, numbers, strings, "
                "containers and the project's settings types)"
            ) from None
        raise ValueError(f"{what} '{name}' is not a readable checkpoint: {_detail(err)}") from None
    except Exception as err:  # torch raises several types for truncated, corrupt or non-torch files
        raise ValueError(f"{what} '{name}' is not a readable checkpoint: {_detail(err)}") from err
    if not isinstance(checkpoint, dict):
        raise ValueError(f"{what} '{name}' is not a checkpoint: it holds a {type(checkpoint).__name__}, not a dict")
    return checkpoint


def _refused_globals(message: str, path: str | os.PathLike[str] | IO[bytes]) -> list[str]:
    """The globals torch refused, from its message, else from a static scan of the file (nothing is run)."""
    for pattern in _REFUSED_GLOBAL:
        match = pattern.search(message)
        if match:
            return [match.group(1).rstrip(".")]
    if not isinstance(path, (str, os.PathLike)):
        return []
    try:
        if zipfile.is_zipfile(path):
            return sorted(torch.serialization.get_unsafe_globals_in_checkpoint(path))[:5]
        return _unsafe_globals_in_pickles(Path(path))[:5]
    except Exception:  # the names only improve the message; the file is refused either way
        return []


def _unsafe_globals_in_pickles(path: Path, max_pickles: int = 8) -> list[str]:
    """Globals named by the pickles of a non-zip file (plain ``pickle.dump`` or torch's legacy format) that torch's
    weights-only unpickler does not allow. Static: ``pickletools`` only parses, it never builds anything."""
    from torch import _weights_only_unpickler as wo  # its allow-list; private, hence the caller's try

    allowed = set(wo._get_allowed_globals()) | set(wo._get_user_allowed_globals())
    found: list[str] = []
    with path.open("rb") as file:
        for _ in range(max_pickles):
            strings: list[str] = []
            try:
                for opcode, arg, _pos in pickletools.genops(file):
                    if opcode.name in ("SHORT_BINUNICODE", "BINUNICODE", "UNICODE", "BINUNICODE8"):
                        strings.append(str(arg))
                    elif opcode.name in ("GLOBAL", "INST"):
                        found.append(".".join(str(arg).split(" ", 1)))
                    elif opcode.name == "STACK_GLOBAL" and len(strings) >= 2:
                        found.append(f"{strings[-2]}.{strings[-1]}")
            except Exception:  # tensor bytes after the pickles, or the end of the file
                break
    return sorted({name for name in found if name not in allowed})


def _detail(err: BaseException) -> str:
    """Torch's own reason, on one line, without its advice to load with ``weights_only=False``."""
    message = str(err).split("WeightsUnpickler error:")[-1]
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    lines = [line for line in lines if not line.startswith(("Check the documentation", "Weights only load failed"))]
    text = " ".join(lines)
    if not re.search(r"[A-Za-z]{3}", text):  # EOFError(''), KeyError(101): a truncated or non-torch file
        text = f"truncated, or not a file written by torch.save ({type(err).__name__} {text})".replace(" )", ")")
    return text[:300]
