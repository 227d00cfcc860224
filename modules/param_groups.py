"""Named optimizer parameter groups with layer-wise learning-rate decay and no decay on biases/norms."""

from __future__ import annotations

from torch import nn

from utils.checks import check_non_negative, check_range

NO_DECAY_SUFFIX = ".no_decay"


def _split(name: str, params: list[nn.Parameter], lr: float, weight_decay: float, scale: float) -> list[dict]:
    """One group with weight decay (>= 2-D weights) and one without (biases, norm scales: 1-D or 0-D)."""
    decay = [p for p in params if p.ndim > 1]
    no_decay = [p for p in params if p.ndim <= 1]
    groups = []
    if decay:
        groups.append(
            {"name": name, "params": decay, "lr": lr * scale, "weight_decay": weight_decay, "lr_scale": scale}
        )
    if no_decay:
        groups.append(
            {
                "name": name + NO_DECAY_SUFFIX,
                "params": no_decay,
                "lr": lr * scale,
                "weight_decay": 0.0,
                "lr_scale": scale,
            }
        )
    return groups


def check_lr_settings(lr: float, weight_decay: float, layer_decay: float) -> None:
    """Raises ValueError unless lr > 0, weight_decay >= 0 and 0 < layer_decay <= 1 (see `build_param_groups`)."""
    check_range("lr", lr, 0.0, low_open=True)
    check_non_negative("weight_decay", weight_decay)
    check_range("layer_decay", layer_decay, 0.0, 1.0, low_open=True)


def build_param_groups(net: nn.Module, lr: float, weight_decay: float, layer_decay: float = 1.0) -> list[dict]:
    """Optimizer parameter groups for an `InkNet` (anything with `encoder`, `decoder`, `head`).

    Groups, each a dict with ``name``, ``params``, ``lr``, ``weight_decay`` and ``lr_scale``:

    - ``head`` and ``decoder`` at `lr` (new layers);
    - ``encoder.extra`` at `lr`: encoder parameters outside the backbone stages (3-D depth-pooling attention);
    - ``encoder.<stage>`` for the backbone stages from `encoder.stage_parameters()`, top to bottom: the top
      stage at ``lr × layer_decay``, each stage below one more factor, the stem lowest
      (``lr × layer_decay^n`` with n stages including the stem). With ``layer_decay=1`` all share `lr`.

    Every group is split in two: weights that decay, and biases / norm parameters (ndim <= 1) in
    ``<name>.no_decay`` with weight decay 0 (timm's rule). Empty groups are left out. Parameters that do
    not require grad (a frozen encoder) are included, so unfreezing needs no new optimizer.

    Args:
        net: the network.
        lr: base learning rate (> 0).
        weight_decay: weight decay of the decaying groups (>= 0).
        layer_decay: factor per encoder stage, in (0, 1].

    Returns:
        The list of groups; every parameter of `net` is in exactly one.
    """
    check_lr_settings(lr, weight_decay, layer_decay)
    for part in ("encoder", "decoder", "head"):
        if not isinstance(getattr(net, part, None), nn.Module):
            raise ValueError(f"build_param_groups needs a net with an `{part}` module, got {type(net).__name__}")

    groups = _split("head", list(net.head.parameters()), lr, weight_decay, 1.0)
    groups += _split("decoder", list(net.decoder.parameters()), lr, weight_decay, 1.0)
    stages = net.encoder.stage_parameters()
    in_stages = {id(p) for _, params in stages for p in params}
    extra = [p for p in net.encoder.parameters() if id(p) not in in_stages]
    groups += _split("encoder.extra", extra, lr, weight_decay, 1.0)
    for depth, (stage, params) in enumerate(reversed(stages), start=1):
        groups += _split(f"encoder.{stage}", params, lr, weight_decay, layer_decay**depth)

    seen: set[int] = set()
    for group in groups:
        for p in group["params"]:
            if id(p) in seen:
                raise ValueError(f"a parameter appears in two groups (second: {group['name']}); modules share it")
            seen.add(id(p))
    outside = [n for n, p in net.named_parameters() if id(p) not in seen]
    if outside:
        raise ValueError(f"parameters outside encoder/decoder/head get no optimizer group: {outside[:5]}")
    return groups
