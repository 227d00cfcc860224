"""Grad-CAM of the ink logit and per-slice depth attribution for a model with ``net``: plain torch, no Trainer.

Kept next to the model rather than in the callback so that it can be called on any module holding ``net``
(image [B, D, T, T] → logits [B, 1, T, T]) from a notebook or a script, and tested without a fit;
`callbacks.cam.GradCAMCallback` only chooses tiles, calls `compute_grad_cam` and draws the results.

The Grad-CAM recipe (Selvaraju et al. 2017, for segmentation as in Vinogradova et al. 2020 and pytorch-grad-cam's
``SemanticSegmentationTarget``):

* target ``y`` = the sum of the ink logits over the tile's *ink-class mask*: the valid pixels the model
  predicts as ink (logit > 0). Early in training a tile may have no predicted ink; it then falls back to the
  labelled ink pixels, then to all valid pixels (``target="label"`` / ``"valid"`` pick those directly).
* activation ``A`` [C, h, w] at the target layer, weights ``w_c`` = spatial mean of ``dy/dA_c``,
  CAM = ReLU(sum_c w_c A_c), upsampled bilinearly to the tile and divided by its maximum (0 stays
  "no positive evidence"; an all-zero CAM stays zero).
* a 5-D activation ``A`` [C, d, h, w] (inside a 3-D encoder, before depth pooling) gets weights per depth
  index, ``w_{c,k}`` = mean over (h, w) of ``dy/dA_{c,k}``: each depth index is treated as its own 2-D
  layer, so a depth the logit does not depend on gets zero weight (global weights over (d, h, w) would
  instead copy the activation's depth pattern whether or not it matters). The 2-D map is the sum over depth.

Default target layer: the deepest spatial activation of ``net.encoder``, found by one probe forward pass:
among the modules under ``net.encoder`` that run once and return a single tensor of 4 (``[B, C, h, w]``) or 5
(``[B, C, d, h, w]``) dimensions, keep those with ``h, w >= 2`` (a 1×1 map has no spatial content), prefer
5-D ones (3-D encoders: the depth-resolved stage, not its depth-pooled copy), take the smallest ``h·w``
(deepest stage), and of those the last to finish (the stage container rather than its last conv). For a timm
ResNet that is ``net.encoder.model.layer4`` (``layer3`` when the tile is too small), for the 3-D encoders the
deepest ``net.encoder.layer{k}``.

Why our own hooks rather than the ``grad-cam`` package: no extra dependency; 5-D activations and the
per-depth profile are not something it offers; it calls ``backward()``, which writes parameter ``.grad``
(ours uses ``torch.autograd.grad`` w.r.t. the activation and the input only, so parameter gradients are never
touched); and Lightning runs validation under ``torch.inference_mode``, which needs the explicit
``inference_mode(False)`` + clone handling done here.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

TARGETS = ("predicted", "label", "valid")


@dataclass
class CamResult:
    """Grad-CAM of a batch of tiles, all float32 on the CPU.

    Attributes:
        cam: [N, T, T] class activation maps in [0, 1].
        cam_depth: [N, D] share of CAM mass per input slice (sums to 1), or None for a 4-D target layer.
        input_depth: [N, D] share of |input-gradient × input| per input slice (sums to 1; 0 when no gradient).
        logits: [N, 1, T, T] the model's ink logits.
        target_mask: [N, 1, T, T] the pixels whose logits were summed into the target.
        target_source: per tile, which mask that was: ``predicted``, ``label``, ``valid`` or ``all``.
        layer: the target layer's dotted name under the LightningModule.
        activation_shape: shape of the target layer's activation (batch included).
    """

    cam: Tensor
    cam_depth: Tensor | None
    input_depth: Tensor
    logits: Tensor
    target_mask: Tensor
    target_source: list[str]
    layer: str
    activation_shape: tuple[int, ...]


# ------------------------------------------------------------------------------------------------- model access


def get_net(pl_module: nn.Module) -> nn.Module:
    """The module's ``net`` (image [B, D, T, T] → logits [B, 1, T, T]); a clear error when it has none."""
    net = getattr(pl_module, "net", None)
    if not isinstance(net, nn.Module):
        raise ValueError(
            f"GradCAMCallback needs the LightningModule ({type(pl_module).__name__}) to have an attribute `net`: "
            "an nn.Module mapping an image [B, D, T, T] to logits [B, 1, T, T]"
        )
    return net


def find_module(pl_module: nn.Module, name: str) -> nn.Module:
    """The submodule at dotted path `name` under `pl_module` (e.g. ``net.encoder.layer3``).

    Raises:
        ValueError: no such module; the message lists close matches and some valid names.
    """
    names = [n for n, _ in pl_module.named_modules() if n]
    modules = dict(pl_module.named_modules())
    if name in modules and name:
        return modules[name]
    close = difflib.get_close_matches(name, names, n=5, cutoff=0.5)
    # The top levels under `net` are the names people choose from; deeper ones are found by the close matches.
    shallow = [n for n in names if n.startswith("net.") and n.count(".") <= 3]
    shown = shallow[:25] or names[:25]
    more = f" … ({len(names)} modules in all; see pl_module.named_modules())" if len(names) > len(shown) else ""
    raise ValueError(
        f"GradCAMCallback target_layer={name!r} is not a module of {type(pl_module).__name__}"
        + (f"; close matches: {close}" if close else "")
        + f"; valid names include: {', '.join(shown)}{more}"
    )


@contextmanager
def preserved_module_state(module: nn.Module) -> Iterator[None]:
    """Restores every submodule's ``training`` flag and every parameter's ``requires_grad`` on exit."""
    modes = [(m, m.training) for m in module.modules()]
    flags = [(p, p.requires_grad) for p in module.parameters()]
    try:
        yield
    finally:
        for m, training in modes:
            m.training = training
        for p, requires_grad in flags:
            p.requires_grad_(requires_grad)


@contextmanager
def _grad_context(device: torch.device) -> Iterator[None]:
    # Lightning validates under inference_mode; autocast from mixed precision must not reach the CAM maths.
    with (
        torch.inference_mode(False),
        torch.enable_grad(),
        torch.autocast(device_type=device.type, enabled=False),
        torch.autocast(device_type="cpu", enabled=False),
    ):
        yield


def _device(net: nn.Module, image: Tensor) -> torch.device:
    param = next((p for p in net.parameters() if p.is_floating_point()), None)
    return param.device if param is not None else image.device


def _model_input(net: nn.Module, image: Tensor) -> Tensor:
    param = next((p for p in net.parameters() if p.is_floating_point()), None)
    device = _device(net, image)
    # float32 normally; a model held in half precision ("-true" precisions) must get its own dtype.
    dtype = param.dtype if param is not None and param.dtype != torch.float64 else torch.float32
    # .clone() under inference_mode(False) turns a tensor created in inference mode into a normal one.
    return image.detach().to(device=device, dtype=dtype).clone()


def default_target_layer(pl_module: nn.Module, image: Tensor) -> str:
    """The deepest spatial activation of ``net.encoder`` (rule in the module docstring), by one probe forward.

    Args:
        pl_module: the LightningModule holding ``net``.
        image: one or more input tiles [B, D, T, T] (only the first is used).

    Raises:
        ValueError: ``net`` has no ``encoder`` or nothing under it yields a 4-D/5-D tensor.
    """
    net = get_net(pl_module)
    encoder = getattr(net, "encoder", None)
    if not isinstance(encoder, nn.Module):
        raise ValueError(
            f"GradCAMCallback: {type(net).__name__} has no `encoder` module to pick a default target layer from; "
            "set target_layer explicitly (a dotted module name under the LightningModule)"
        )
    prefix = {id(m): n for n, m in pl_module.named_modules()}
    seen: list[tuple[str, tuple[int, ...]]] = []
    calls: dict[str, int] = {}
    handles = []

    def hook(name: str) -> Any:
        def record(_module: nn.Module, _inputs: Any, output: Any) -> None:
            calls[name] = calls.get(name, 0) + 1
            if isinstance(output, Tensor) and output.ndim in (4, 5):
                seen.append((name, tuple(output.shape)))

        return record

    for module in encoder.modules():
        handles.append(module.register_forward_hook(hook(prefix[id(module)])))
    try:
        with preserved_module_state(pl_module), torch.inference_mode(False), torch.no_grad():
            pl_module.eval()
            net(_model_input(net, image[:1]))
    finally:
        for handle in handles:
            handle.remove()
    candidates = [(n, s) for n, s in seen if calls[n] == 1]
    if not candidates:
        raise ValueError(
            f"GradCAMCallback: no module under {prefix[id(encoder)]} returns a single [B, C, h, w] or "
            "[B, C, d, h, w] tensor; set target_layer explicitly"
        )
    spatial = [(n, s) for n, s in candidates if min(s[-2:]) >= 2] or candidates
    volumetric = [(n, s) for n, s in spatial if len(s) == 5] or spatial
    smallest = min(math.prod(s[-2:]) for _, s in volumetric)
    return [n for n, s in volumetric if math.prod(s[-2:]) == smallest][-1]


# ------------------------------------------------------------------------------------------------- the CAM


def target_masks(
    logits: Tensor, label: Tensor | None, valid: Tensor | None, target: str = "predicted"
) -> tuple[Tensor, list[str]]:
    """The per-tile pixel masks whose logits form the Grad-CAM target, and which rule gave each.

    ``predicted``: valid pixels with logit > 0, falling back to labelled ink, then to valid pixels, then to all
    pixels when a tile has none of the former. ``label`` starts at labelled ink; ``valid`` at valid pixels.

    Returns:
        (mask [N, 1, h, w] float 0/1 at the logits' resolution, list of rule names per tile).
    """
    if target not in TARGETS:
        raise ValueError(f"GradCAMCallback target={target!r}: choose one of {list(TARGETS)}")
    size = logits.shape[-2:]

    def fit(mask: Tensor | None) -> Tensor:
        if mask is None:
            return torch.ones_like(logits, dtype=torch.bool)
        mask = mask.to(logits.device, torch.float32)
        if mask.shape[-2:] != size:
            mask = F.interpolate(mask, size=size, mode="nearest")
        return mask > 0.5

    valid_mask = fit(valid)
    rules = {
        "predicted": (logits > 0) & valid_mask,
        "label": (fit(label) & valid_mask) if label is not None else torch.zeros_like(valid_mask),
        "valid": valid_mask,
        "all": torch.ones_like(valid_mask),
    }
    order = list(rules)[list(rules).index(target) :]
    masks, sources = [], []
    for i in range(logits.shape[0]):
        source = next(r for r in order if r == "all" or bool(rules[r][i].any()))
        masks.append(rules[source][i])
        sources.append(source)
    return torch.stack(masks).float(), sources


def _shares(mass: Tensor) -> Tensor:
    total = mass.sum(dim=-1, keepdim=True)
    return torch.where(total > 0, mass / total.clamp_min(1e-30), torch.zeros_like(mass))


def compute_grad_cam(
    pl_module: nn.Module,
    image: Tensor,
    label: Tensor | None = None,
    valid: Tensor | None = None,
    target_layer: str | None = None,
    target: str = "predicted",
) -> CamResult:
    """Grad-CAM of the summed ink logit at `target_layer`, plus the per-slice depth profiles.

    Leaves the model as it found it: training flags, ``requires_grad``, parameters, buffers (it runs in eval
    mode, so BatchNorm statistics do not move) and parameter ``.grad`` (only ``torch.autograd.grad`` w.r.t.
    the activation and the input is used). Works inside ``torch.inference_mode`` and under autocast (the
    CAM runs with autocast disabled, in float32 unless the model is held in half precision).

    Args:
        pl_module: a module with ``net`` (image [B, D, T, T] → logits [B, 1, T, T]).
        image: tiles [N, D, T, T].
        label: ink labels [N, 1, T, T] or None.
        valid: valid-pixel masks [N, 1, T, T] or None (all valid).
        target_layer: dotted module name under `pl_module`; None: `default_target_layer`.
        target: the pixel mask rule of the target (`target_masks`).

    Returns:
        A `CamResult`.

    Raises:
        ValueError: a bad image shape, target layer or target rule, or a target layer the logits do not
            depend on.
    """
    if image.ndim != 4:
        raise ValueError(f"compute_grad_cam expects image tiles [N, D, T, T], got shape {list(image.shape)}")
    if target not in TARGETS:
        raise ValueError(f"GradCAMCallback target={target!r}: choose one of {list(TARGETS)}")
    net = get_net(pl_module)
    name = target_layer if target_layer is not None else default_target_layer(pl_module, image)
    layer = find_module(pl_module, name)
    captured: list[Any] = []
    handle = layer.register_forward_hook(lambda _m, _i, output: captured.append(output))
    try:
        with preserved_module_state(pl_module), _grad_context(_device(net, image)):
            pl_module.eval()
            x = _model_input(net, image).requires_grad_(True)
            logits = net(x)
            handle.remove()
            if len(captured) != 1 or not isinstance(captured[0], Tensor) or captured[0].ndim not in (4, 5):
                what = f"ran {len(captured)} times" if len(captured) != 1 else f"returned {_describe(captured[0])}"
                raise ValueError(
                    f"GradCAMCallback target_layer={name!r} {what} in one forward pass; it must run once and "
                    "return one tensor [B, C, h, w] or [B, C, d, h, w]"
                )
            activation = captured[0]
            if not activation.requires_grad:
                raise ValueError(
                    f"GradCAMCallback target_layer={name!r}: its output does not depend on the input image"
                )
            if logits.ndim != 4 or logits.shape[1] != 1 or logits.shape[0] != image.shape[0]:
                raise ValueError(
                    f"GradCAMCallback: net returned shape {list(logits.shape)} for input {list(image.shape)}; "
                    "expected logits [N, 1, T, T]"
                )
            mask, sources = target_masks(logits.detach(), label, valid, target)
            score = (logits.float() * mask).sum()
            if not score.requires_grad:
                raise ValueError("GradCAMCallback: the net's logits do not depend on its input image")
            grad_a, grad_x = torch.autograd.grad(score, [activation, x], allow_unused=True)
    finally:
        handle.remove()
    if grad_a is None:
        raise ValueError(f"GradCAMCallback target_layer={name!r}: the logits do not depend on its output")
    cam, cam_depth = _cam_maps(activation.detach().float(), grad_a.float(), tuple(image.shape[-2:]), image.shape[1])
    if grad_x is None:
        input_depth = torch.zeros(image.shape[:2])
    else:
        input_depth = _shares((grad_x.float() * x.detach().float()).abs().sum(dim=(-2, -1))).cpu()
    return CamResult(
        cam=cam.cpu(),
        cam_depth=None if cam_depth is None else cam_depth.cpu(),
        input_depth=input_depth,
        logits=logits.detach().float().cpu(),
        target_mask=mask.cpu(),
        target_source=sources,
        layer=name,
        activation_shape=tuple(activation.shape),
    )


def _describe(value: object) -> str:
    return f"a tensor of shape {list(value.shape)}" if isinstance(value, Tensor) else f"a {type(value).__name__}"


def _cam_maps(activation: Tensor, grad: Tensor, size: tuple[int, int], depth: int) -> tuple[Tensor, Tensor | None]:
    """(CAM [N, T, T] in [0, 1], depth shares [N, D] or None) from an activation and its gradient."""
    weights = grad.mean(dim=(-2, -1), keepdim=True)  # per channel (and per depth index for 5-D)
    maps = F.relu((weights * activation).sum(dim=1))  # [N, h, w] or [N, d, h, w]
    cam_depth = None
    if activation.ndim == 5:
        mass = maps.sum(dim=(-2, -1))  # [N, d]
        if mass.shape[-1] != depth:
            mass = F.interpolate(mass[:, None], size=depth, mode="linear", align_corners=False)[:, 0].clamp_min(0)
        cam_depth = _shares(mass)
        maps = maps.sum(dim=1)
    cam = F.interpolate(maps[:, None], size=size, mode="bilinear", align_corners=False)[:, 0].clamp_min(0)
    peak = cam.amax(dim=(-2, -1), keepdim=True)
    cam = torch.where(peak > 0, cam / peak.clamp_min(1e-30), torch.zeros_like(cam))
    return cam, cam_depth
