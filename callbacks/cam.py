"""Grad-CAM of the ink logit on a fixed set of validation tiles, saved as PNG overlays and logged to TensorBoard.

What the pictures mean:

* ``epoch{E:03d}_tile{i}.png`` — the tile's middle input slice in grey, the Grad-CAM heat map blended over it
  (jet palette, opacity growing with the CAM value) and the ink label's outline in green. Hot regions are the
  places whose features at the target layer raise the summed ink logit; the outline shows where ink really is.
* ``epoch{E:03d}_tile{i}_depth.png`` — which input depth slices the model relies on. Bars (any model): the
  share of input-gradient × input, ``sum_{y,x} |d target / d x[d, y, x] * x[d, y, x]|`` per slice ``d``.
  Line (3-D target layers only): the share of Grad-CAM mass at each depth index of the 5-D activation,
  interpolated back to the input's ``D`` slices. Both sum to 1 over the slices; the x axis gives absolute
  slice numbers (``z_start + d``) when the data module tells ``z_start``.

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
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from pytorch_lightning.loggers import TensorBoardLogger
from pytorch_lightning.utilities import rank_zero_warn
from torch import Tensor, nn
from torch.utils.data import DataLoader, IterableDataset

from callbacks.overlay import cam_overlay, depth_profile_chart, write_png

TARGETS = ("predicted", "label", "valid")
_TILE_KEYS = ("image", "label", "valid", "yx")


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


# ------------------------------------------------------------------------------------------------- the callback


class GradCAMCallback(pl.Callback):
    """Saves and logs Grad-CAM overlays and depth profiles of a fixed set of validation tiles.

    Every `every_n_epochs` epochs (at the end of validation; never in the sanity check; once per epoch even when
    validation runs several times in it; rank zero only), the callback runs `compute_grad_cam` on its tiles and
    writes ``<output_dir>/epoch{E:03d}_tile{i}.png`` and ``..._tile{i}_depth.png`` (meaning: module docstring),
    and logs them as images ``cam/tile{i}`` and ``cam/depth{i}`` to every TensorBoard logger.

    The tiles are chosen once, the first time: `candidate_tiles` items evenly spread over the validation
    dataset are read (the first batches of the loader if it is not indexable), and `num_tiles` are taken,
    evenly spread, from those whose labelled ink covers at least `min_ink_fraction` of the tile (topped up
    with the inkiest others). They are kept in `state_dict` (about ``num_tiles·D·T²·4`` bytes for the
    images), so a resumed run shows the same tiles. Two instances need distinct `output_dir` and
    `target_layer` (the latter keys the checkpoint state).

    Args:
        every_n_epochs: run at epochs E with ``(E + 1) % every_n_epochs == 0``.
        num_tiles: tiles to show.
        target_layer: dotted module name under the LightningModule, e.g. ``net.encoder.model.layer3`` or
            ``net.decoder.blocks.0``; None: the deepest spatial encoder activation (module docstring).
        output_dir: where the PNGs go; default ``<trainer.log_dir>/cam``.
        log_to_tensorboard: also log the images to TensorBoard loggers.
        min_ink_fraction: share of a tile's pixels labelled ink (inside the mask) that makes it informative.
        candidate_tiles: validation tiles examined when choosing.
        target: which pixels' logits are summed into the target: ``predicted`` (standard), ``label``, ``valid``.
    """

    def __init__(
        self,
        every_n_epochs: int = 1,
        num_tiles: int = 4,
        target_layer: str | None = None,
        output_dir: str | None = None,
        log_to_tensorboard: bool = True,
        min_ink_fraction: float = 0.05,
        candidate_tiles: int = 64,
        target: str = "predicted",
    ) -> None:
        super().__init__()
        for setting, value in (("every_n_epochs", every_n_epochs), ("num_tiles", num_tiles)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"GradCAMCallback {setting}={value!r}: must be an integer >= 1")
        if isinstance(candidate_tiles, bool) or not isinstance(candidate_tiles, int) or candidate_tiles < num_tiles:
            raise ValueError(f"GradCAMCallback candidate_tiles={candidate_tiles!r}: must be an integer >= num_tiles")
        if not 0.0 <= min_ink_fraction <= 1.0:
            raise ValueError(f"GradCAMCallback min_ink_fraction={min_ink_fraction}: must be in [0, 1]")
        if target not in TARGETS:
            raise ValueError(f"GradCAMCallback target={target!r}: choose one of {list(TARGETS)}")
        if target_layer is not None and (not isinstance(target_layer, str) or not target_layer):
            raise ValueError(f"GradCAMCallback target_layer={target_layer!r}: must be a dotted module name or None")
        self.every_n_epochs = every_n_epochs
        self.num_tiles = num_tiles
        self.target_layer = target_layer
        self.output_dir = output_dir
        self.log_to_tensorboard = log_to_tensorboard
        self.min_ink_fraction = min_ink_fraction
        self.candidate_tiles = candidate_tiles
        self.target = target
        self.tiles: dict[str, Any] | None = None
        self.resolved_layer: str | None = None
        self._last_epoch: int | None = None
        self._log_dir: str | None = None

    @property
    def state_key(self) -> str:
        """Checkpoint key; includes the target layer so instances on different layers keep their own tiles."""
        return self._generate_state_key(target_layer=self.target_layer)

    # ---------------------------------------------------------------------------------------- Lightning hooks

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Checks `net` and an explicit `target_layer` before any training, so a typo fails at once."""
        get_net(pl_module)
        if self.target_layer is not None:
            find_module(pl_module, self.target_layer)

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Runs the CAM when the epoch is due (not in the sanity check; rank zero only)."""
        if trainer.sanity_checking:
            return
        epoch = trainer.current_epoch
        if (epoch + 1) % self.every_n_epochs != 0 or epoch == self._last_epoch:
            return
        self._last_epoch = epoch
        # trainer.log_dir is a collective under DDP: every rank asks for it before rank zero works alone.
        self._log_dir = None if self.output_dir else trainer.log_dir
        if trainer.is_global_zero:
            self.run(trainer, pl_module)

    def state_dict(self) -> dict[str, Any]:
        """The chosen tiles (CPU tensors and fragment ids), or nothing before they are chosen."""
        if self.tiles is None:
            return {}
        return {"tiles": {k: (list(v) if k == "fragment" else v) for k, v in self.tiles.items()}}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restores the tiles of `state_dict` (an empty dict leaves them to be chosen)."""
        tiles = state_dict.get("tiles")
        self.tiles = None if tiles is None else _check_tiles(tiles, "GradCAMCallback checkpoint state")

    # ---------------------------------------------------------------------------------------- work

    def run(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> list[Path]:
        """Computes, saves and logs the CAMs of the tiles for the current epoch; returns the PNG paths."""
        # Validation hooks run under inference_mode; tiles made there could never take part in autograd.
        if self._log_dir is None and not self.output_dir and trainer.world_size == 1:
            self._log_dir = trainer.log_dir  # a direct call outside the hook, single process
        with torch.inference_mode(False):
            return self._run(trainer, pl_module)

    def _run(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> list[Path]:
        if self.tiles is None:
            self.tiles = self.select_tiles(trainer)
            if self.tiles is None:
                return []
        tiles = self.tiles
        if self.resolved_layer is None:
            self.resolved_layer = self.target_layer or default_target_layer(pl_module, tiles["image"][:1])
        result = compute_grad_cam(
            pl_module, tiles["image"], tiles["label"], tiles["valid"], self.resolved_layer, self.target
        )
        out_dir = Path(self.output_dir) if self.output_dir else Path(self._log_dir or trainer.default_root_dir) / "cam"
        loggers = [lg for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)] if self.log_to_tensorboard else []
        epoch, step = trainer.current_epoch, trainer.global_step
        first_slice = _z_start(trainer)
        image = tiles["image"]
        paths: list[Path] = []
        for i in range(image.shape[0]):
            overlay = cam_overlay(
                image[i, image.shape[1] // 2].numpy(), result.cam[i].numpy(), tiles["label"][i, 0].numpy()
            )
            y, x = (int(v) for v in tiles["yx"][i])
            chart = depth_profile_chart(
                result.input_depth[i].numpy(),
                None if result.cam_depth is None else result.cam_depth[i].numpy(),
                first_slice=first_slice,
                title=f"tile {i}: {tiles['fragment'][i]} y={y} x={x}, epoch {epoch}, target {result.target_source[i]}",
            )
            paths.append(write_png(out_dir / f"epoch{epoch:03d}_tile{i}.png", overlay))
            paths.append(write_png(out_dir / f"epoch{epoch:03d}_tile{i}_depth.png", chart))
            for logger in loggers:
                logger.experiment.add_image(f"cam/tile{i}", overlay, global_step=step, dataformats="HWC")
                logger.experiment.add_image(f"cam/depth{i}", chart, global_step=step, dataformats="HWC")
        return paths

    def select_tiles(self, trainer: pl.Trainer) -> dict[str, Any] | None:
        """Chooses `num_tiles` validation tiles, preferring ones with ink (rule in the class docstring)."""
        items = self._candidates(trainer)
        if not items:
            rank_zero_warn("GradCAMCallback: the validation data yielded no tile; no Grad-CAM images are made")
            return None
        tiles = _check_tiles(_stack(items), "GradCAMCallback validation tiles")
        ink = ((tiles["label"] > 0.5) & (tiles["valid"] > 0.5)).float().mean(dim=(1, 2, 3))
        informative = torch.nonzero(ink >= max(self.min_ink_fraction, 1e-12)).flatten().tolist()
        count = min(self.num_tiles, len(items))
        if len(informative) >= count:
            chosen = [informative[int(j)] for j in np.linspace(0, len(informative) - 1, count).round()]
        else:
            valid = tiles["valid"].mean(dim=(1, 2, 3))
            rest = sorted(set(range(len(items))) - set(informative), key=lambda j: (-float(ink[j]), -float(valid[j])))
            chosen = informative + rest[: count - len(informative)]
        if count < self.num_tiles:
            rank_zero_warn(f"GradCAMCallback: only {count} validation tiles available (num_tiles={self.num_tiles})")
        return {k: ([v[j] for j in chosen] if k == "fragment" else v[chosen].clone()) for k, v in tiles.items()}

    def _candidates(self, trainer: pl.Trainer) -> list[dict[str, Any]]:
        loader = _val_loader(trainer)
        dataset = getattr(loader, "dataset", None)
        with torch.inference_mode(False):
            if dataset is not None and not isinstance(dataset, IterableDataset) and hasattr(dataset, "__len__"):
                n = len(dataset)
                picks = np.unique(np.linspace(0, n - 1, min(n, self.candidate_tiles)).round().astype(int))
                return [_as_item(dataset[int(j)]) for j in picks] if n else []
            items: list[dict[str, Any]] = []
            for batch in loader:
                items.extend(_unbatch(batch))
                if len(items) >= self.candidate_tiles:
                    break
            return items[: self.candidate_tiles]


# ------------------------------------------------------------------------------------------------- tile helpers


def _val_loader(trainer: pl.Trainer) -> DataLoader:
    loaders = trainer.val_dataloaders
    if loaders is None and trainer.datamodule is not None:
        loaders = trainer.datamodule.val_dataloader()
    if isinstance(loaders, Mapping):
        loaders = next(iter(loaders.values()), None)
    if isinstance(loaders, list | tuple):
        loaders = loaders[0] if loaders else None
    if loaders is None:
        raise ValueError("GradCAMCallback needs a validation dataloader (trainer.val_dataloaders / the datamodule)")
    return loaders


def _as_item(item: Any) -> dict[str, Any]:
    if not isinstance(item, Mapping) or "image" not in item:
        raise ValueError(
            f"GradCAMCallback expects validation items as dicts with 'image' [D, T, T] (and 'label', 'valid', "
            f"'fragment', 'yx'), got {type(item).__name__}"
        )
    image = torch.as_tensor(item["image"]).detach().float().clone()
    if image.ndim != 3:
        raise ValueError(f"GradCAMCallback: a validation item's image must be [D, T, T], got {list(image.shape)}")
    plane = torch.zeros((1, *image.shape[-2:]))
    label = item.get("label")
    valid = item.get("valid")
    return {
        "image": image,
        "label": plane.clone()
        if label is None
        else torch.as_tensor(label).detach().float().clone().reshape(plane.shape),
        "valid": plane + 1 if valid is None else torch.as_tensor(valid).detach().float().clone().reshape(plane.shape),
        "fragment": str(item.get("fragment", "")),
        "yx": torch.as_tensor(item.get("yx", (0, 0))).detach().long().clone().reshape(2),
    }


def _unbatch(batch: Any) -> list[dict[str, Any]]:
    if not isinstance(batch, Mapping) or "image" not in batch:
        raise ValueError(
            f"GradCAMCallback expects validation batches as dicts with 'image', got {type(batch).__name__}"
        )
    n = len(batch["image"])
    return [
        _as_item({k: (v[i] if isinstance(v, Tensor | list | tuple) else v) for k, v in batch.items()}) for i in range(n)
    ]


def _stack(items: list[dict[str, Any]]) -> dict[str, Any]:
    shapes = {tuple(it["image"].shape) for it in items}
    if len(shapes) != 1:
        raise ValueError(f"GradCAMCallback: validation tiles differ in shape {sorted(shapes)}")
    stacked: dict[str, Any] = {k: torch.stack([it[k] for it in items]) for k in _TILE_KEYS}
    stacked["fragment"] = [it["fragment"] for it in items]
    return stacked


def _check_tiles(tiles: Mapping[str, Any], where: str) -> dict[str, Any]:
    missing = [k for k in (*_TILE_KEYS, "fragment") if k not in tiles]
    if missing:
        raise ValueError(f"{where}: tiles lack {missing}")
    image = torch.as_tensor(tiles["image"]).float()
    n = image.shape[0] if image.ndim == 4 else -1
    plane = (n, 1, *image.shape[-2:])
    ok = (
        image.ndim == 4
        and n > 0
        and tuple(tiles["label"].shape) == plane
        and tuple(tiles["valid"].shape) == plane
        and tuple(tiles["yx"].shape) == (n, 2)
        and len(tiles["fragment"]) == n
    )
    if not ok:
        raise ValueError(
            f"{where}: inconsistent tiles: image {list(image.shape)}, label {list(tiles['label'].shape)}, "
            f"valid {list(tiles['valid'].shape)}, yx {list(tiles['yx'].shape)}, {len(tiles['fragment'])} fragment ids"
        )
    return {
        "image": image.cpu(),
        "label": torch.as_tensor(tiles["label"]).float().cpu(),
        "valid": torch.as_tensor(tiles["valid"]).float().cpu(),
        "fragment": [str(f) for f in tiles["fragment"]],
        "yx": torch.as_tensor(tiles["yx"]).long().cpu(),
    }


def _z_start(trainer: pl.Trainer) -> int:
    hparams = getattr(getattr(trainer, "datamodule", None), "hparams", None)
    if isinstance(hparams, Mapping) and isinstance(hparams.get("z_start"), int):
        return int(hparams["z_start"])
    return 0
