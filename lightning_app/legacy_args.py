"""The flat data settings of earlier versions on the command line and in ``--config`` files, mapped into their groups.

``--data.z_start 4`` becomes ``--data.window.z_start 4``, and a config file whose ``data:`` block holds flat keys
(a ``config.yaml`` saved by an earlier run) is read with them moved into their groups
(`datamodules.settings.FLAT_KEYS`), so old commands and replayed runs keep working.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from datamodules.settings import FLAT_KEYS, group_flat_settings

_FLAT_ARG = re.compile(r"^--data\.([a-z_]+)(=.*)?$")
_CONFIG_FLAGS = ("--config", "-c")


def regroup_data_args(args: Sequence[str]) -> list[str]:
    """``args`` with flat ``--data.<key>`` options and config files' flat ``data:`` keys moved into their groups."""
    out: list[str] = []
    pending_config = False
    for arg in args:
        if pending_config:
            out.append(_regrouped_config(arg))
            pending_config = False
            continue
        name, sep, value = arg.partition("=")
        if name in _CONFIG_FLAGS:
            out.append(f"{name}={_regrouped_config(value)}" if sep else arg)
            pending_config = not sep
            continue
        match = _FLAT_ARG.match(arg)
        if match and match.group(1) in FLAT_KEYS:
            group, key = FLAT_KEYS[match.group(1)]
            arg = f"--data.{group}.{key}{match.group(2) or ''}"
        out.append(arg)
    return out


def _regrouped_config(value: str) -> str:
    """A config file with flat data keys as the same config, regrouped, in YAML text; anything else unchanged."""
    path = Path(value)
    if not path.is_file():
        return value
    try:
        config = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return value  # the parser reports it, naming the file
    data = config.get("data") if isinstance(config, Mapping) else None
    if not isinstance(data, Mapping):
        return value
    block = data.get("init_args") if isinstance(data.get("init_args"), Mapping) else data
    if not any(key in FLAT_KEYS and not (key == "demo" and isinstance(block[key], Mapping)) for key in block):
        return value
    regrouped: Any = group_flat_settings(block)
    config = {**config, "data": {**data, "init_args": regrouped} if block is not data else regrouped}
    return yaml.safe_dump(config, sort_keys=False)
