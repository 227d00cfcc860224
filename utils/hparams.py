"""Reading one setting out of a data module's hyperparameters, grouped (today's) or flat (earlier versions')."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def grouped_setting(hparams: object, group: str, key: str) -> Any:
    """``hparams[group][key]``, else a flat ``hparams[key]`` (data modules of the earlier contract), else None."""
    if not isinstance(hparams, Mapping):
        return None
    block = hparams.get(group)
    if isinstance(block, Mapping) and key in block:
        return block[key]
    return hparams.get(key)
