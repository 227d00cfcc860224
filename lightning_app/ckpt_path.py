"""``--ckpt_path`` checked before Lightning reads it: a missing, unsafe or another model's file refused in one line.

Lightning would report a checkpoint of another architecture as a long list of state-dict mismatches after the
run folder is made, and a 3-D model trained on a different depth not at all; `check_checkpoint_matches` says it
in one line before anything starts.
"""

from __future__ import annotations

from pathlib import Path

import torch

from modules.ink_module import shapeless_hparams
from utils.checkpoints import load_checkpoint

# What to do when a setting the weights' shapes cannot tell differs from the checkpoint's.
SETTING_HINTS = {
    "num_slices": "the slice window data.z_start..data.z_end sets it: leave both out to use the checkpoint's own",
}


def check_checkpoint_matches(path: str | Path, model: torch.nn.Module) -> None:
    """Fails early, in one line, on a checkpoint that is missing, unreadable, holds code, or was saved by another
    model."""
    # Weights-only: a checkpoint holding code is refused here, before Lightning reads it (also weights-only, through
    # AtomicCheckpointIO).
    checkpoint = load_checkpoint(path, what="ckpt_path")
    if "state_dict" not in checkpoint:
        raise ValueError(f"ckpt_path '{path}' is not a Lightning checkpoint (no state_dict)")
    # Settings of either layout (before and after they were grouped), by dotted name such as ``net.depth_pool``.
    saved_hparams = shapeless_hparams(checkpoint.get("hyper_parameters") or {})
    own_hparams = shapeless_hparams(getattr(model, "hparams", {}))
    for name in sorted(saved_hparams.keys() & own_hparams.keys()):
        if saved_hparams[name] != own_hparams[name]:
            hint = SETTING_HINTS.get(name, "leave it out to use the checkpoint's own")
            raise ValueError(
                f"ckpt_path '{path}' belongs to another model: it was trained with {name}={saved_hparams[name]!r}, "
                f"this run has {name}={own_hparams[name]!r}; {hint}"
            )
    state, own = checkpoint["state_dict"], model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    reshaped = [k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or reshaped:
        if reshaped:
            key = reshaped[0]
            example = f"{key}: checkpoint {list(state[key].shape)} vs model {list(own[key].shape)}"
        else:
            example = (missing or unexpected)[0]
        raise ValueError(
            f"ckpt_path '{path}' belongs to another model: {len(missing)} missing, {len(unexpected)} unexpected, "
            f"{len(reshaped)} reshaped tensors (e.g. {example}); use the config.yaml saved with that run"
        )
