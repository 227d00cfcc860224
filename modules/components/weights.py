"""Loading local pretrained weights into an encoder (no network access)."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from utils.checkpoints import load_checkpoint

log = logging.getLogger(__name__)

# Lightning checkpoints and common training scripts wrap the weights in one of these keys.
_CONTAINER_KEYS = ("state_dict", "model", "model_state_dict", "net")


@dataclass
class LoadReport:
    """What `load_local_weights` matched, adapted and skipped.

    Attributes:
        loaded: model keys filled from the file.
        adapted: model keys whose input-channel dimension was adapted (first conv).
        missing: model keys the file did not provide (left at their initial values).
        unexpected: file keys with no counterpart in the model.
        mismatched: file keys skipped because their shape could not be adapted.
    """

    loaded: list[str] = field(default_factory=list)
    adapted: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        obj: object = load_file(str(path))
    else:
        # Weights-only with the project's allow-list; a file holding code is refused with UnsafeCheckpointError.
        obj = load_checkpoint(path, what="pretrained_path")
    for key in _CONTAINER_KEYS:
        if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"pretrained_path {path}: expected a state dict of tensors, got {type(obj).__name__}")
    return obj


def _candidates(key: str) -> list[str]:
    """Names a file key may have in the model: any prefix dropped, timm's flattened `stages_0.` form."""
    parts = key.split(".")
    names = []
    for i in range(len(parts)):
        name = ".".join(parts[i:])
        names.append(name)
        # timm's FeatureListNet flattens top-level sequentials: `stages.0.x` becomes `stages_0.x`.
        names.append(re.sub(r"^([A-Za-z_]\w*)\.(\d+)\.", r"\1_\2.", name))
    return names


def adapt_input_channels(weight: torch.Tensor, in_channels: int) -> torch.Tensor:
    """Adapts a conv weight [out, c, ...] to `in_channels` inputs, keeping the response to a constant input.

    The pretrained kernels are summed over their input channels and spread evenly over the new ones: RGB
    channels have no counterpart among depth slices, but the response to a uniform image is kept exactly.
    """
    return weight.sum(dim=1, keepdim=True).expand(-1, in_channels, *weight.shape[2:]) / in_channels


def load_local_weights(model: nn.Module, path: str | Path, what: str = "encoder") -> LoadReport:
    """Loads a local weights file into `model` with `strict=False`, logging what did not match.

    Keys may carry any prefix (``module.``, ``model.``, a Lightning ``state_dict``); conv weights whose
    input channels differ (RGB weights for a many-slice or one-channel stem) are adapted.

    Args:
        model: the module to fill.
        path: a ``.pth``/``.pt``/``.bin``/``.ckpt`` (torch.load) or ``.safetensors`` file.
        what: a name for messages.

    Returns:
        A `LoadReport`.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file is not a state dict, or none of its tensors fits the model.
        utils.checkpoints.UnsafeCheckpointError: the file holds objects other than data (nothing of it is run).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"pretrained_path {path}: no such file (local weights for the {what})")
    source = _read_state_dict(path)
    target = model.state_dict()
    report = LoadReport()
    to_load: dict[str, torch.Tensor] = {}
    for key, tensor in source.items():
        name = next((n for n in _candidates(key) if n in target), None)
        if name is None:
            report.unexpected.append(key)
            continue
        want = target[name]
        if tensor.shape != want.shape:
            same_but_inputs = tensor.ndim == want.ndim >= 3 and tensor.shape[0] == want.shape[0]
            same_but_inputs = same_but_inputs and tensor.shape[2:] == want.shape[2:]
            if not same_but_inputs:
                report.mismatched.append(key)
                continue
            tensor = adapt_input_channels(tensor, want.shape[1])
            report.adapted.append(name)
        to_load[name] = tensor.to(want.dtype)
    if not to_load:
        raise ValueError(
            f"pretrained_path {path}: none of its {len(source)} tensors matches a parameter of the {what} "
            f"(first file keys: {list(source)[:5]}; first model keys: {list(target)[:5]})"
        )
    result = model.load_state_dict(to_load, strict=False)
    report.loaded = sorted(to_load)
    report.missing = list(result.missing_keys)
    log.info("Loaded %d tensors from %s into the %s", len(report.loaded), path, what)
    if report.missing:
        log.warning(
            "%s: %d keys not in %s keep their initial values, e.g. %s",
            what,
            len(report.missing),
            path,
            report.missing[:5],
        )
    if report.mismatched:
        log.warning(
            "%s: %d tensors of %s skipped for shape mismatch, e.g. %s",
            what,
            len(report.mismatched),
            path,
            report.mismatched[:5],
        )
    return report
