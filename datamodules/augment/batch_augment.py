"""Training augmentation of a whole batch in torch, on the device the batch is on (``augment.backend: torch``).

The albumentations path (`datamodules.augment.transforms`) augments one tile at a time in the loader's worker processes;
on a GPU host those workers, not the GPU, set the pace. This path takes the same `AugmentConfig` keys with the
same meaning and applies them to ``[B, D, H, W]`` batches after they reach the device
(`InkDataModule.on_after_batch_transfer`), so the workers only read and normalise. Each sample draws its own
parameters, in the same order as the albumentations path:

1. geometric, on image, label and valid together: horizontal and vertical flip, rotation by a multiple of 90°,
   affine (translation as a fraction of the tile, independent x and y zoom, rotation about the centre; bilinear
   for the image, nearest for label and valid, 0 outside, so pixels from outside the tile get ``valid = 0``);
2. photometric, on the image only: brightness/contrast (``x * (1 + c) + b``), gaussian or centred motion blur
   (odd kernel in ``[3, blur_limit]``, gaussian sigma in ``[0.5, 3]``, borders reflected), gaussian noise (std
   drawn up to ``noise_std``, per pixel and slice), coarse dropout (1 to ``coarse_dropout_holes`` holes); values
   are clipped to ``[0, 1]`` after each step, as albumentations does;
3. slice dropout, then depth reversal.

The random depth shift is not here: both paths choose the slice window when the tile is read, which costs nothing.
Randomness comes from torch's generator of the batch's device (seeded by ``seed_everything``) or the one given.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from datamodules.augment.transforms import AugmentConfig

__all__ = ["augment_batch"]

_SIGMA_RANGE = (0.5, 3.0)  # albumentations GaussianBlur's default sigma_limit


def augment_batch(
    image: Tensor, label: Tensor, valid: Tensor, config: AugmentConfig, generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """Augment a training batch; returns new ``(image, label, valid)`` tensors of the input shapes and dtypes.

    Args:
        image: ``[B, D, H, W]`` floating point in ``[0, 1]``.
        label: ``[B, 1, H, W]`` ink, 0/1.
        valid: ``[B, 1, H, W]`` 1 where the pixel counts.
        config: The settings; ``enabled=False`` returns the inputs unchanged.
        generator: Source of randomness on the batch's device; None: torch's default generator there.

    Raises:
        ValueError: On shapes that do not match, or a non-square tile with ``rotate90_p > 0``.
    """
    if image.ndim != 4 or label.shape != valid.shape or label.shape != (image.shape[0], 1, *image.shape[2:]):
        raise ValueError(
            f"augment_batch: need image [B, D, H, W] and label, valid [B, 1, H, W]; got {tuple(image.shape)}, "
            f"{tuple(label.shape)}, {tuple(valid.shape)}"
        )
    if not config.enabled:
        return image, label, valid
    rand = _Draw(image.shape[0], image.device, generator)
    maps = torch.cat([label, valid], dim=1).to(image.dtype)
    image, maps = _geometric(image, maps, config, rand)
    image = _photometric(image, config, rand)
    image = _depth(image, config, rand)
    return image, maps[:, :1].to(label.dtype), maps[:, 1:].to(valid.dtype)


class _Draw:
    """Per-sample random draws on one device from one generator."""

    def __init__(self, batch: int, device: torch.device, generator: torch.Generator | None) -> None:
        self.batch, self.device, self.generator = batch, device, generator

    def uniform(self, low: float, high: float, *shape: int) -> Tensor:
        size = (self.batch, *shape)
        return low + (high - low) * torch.rand(size, device=self.device, generator=self.generator)

    def chosen(self, p: float) -> Tensor:
        """``[B]`` bool: which samples apply a transform of probability ``p``."""
        return self.uniform(0.0, 1.0) < p

    def integers(self, low: int, high: int, *shape: int) -> Tensor:
        """Integers in ``[low, high]`` inclusive."""
        size = (self.batch, *shape)
        return torch.randint(low, high + 1, size, device=self.device, generator=self.generator)

    def normal(self, shape: tuple[int, ...]) -> Tensor:
        return torch.randn(shape, device=self.device, generator=self.generator)


def _where(chosen: Tensor, new: Tensor, old: Tensor) -> Tensor:
    return torch.where(chosen.view(-1, *([1] * (old.ndim - 1))), new, old)


def _geometric(image: Tensor, maps: Tensor, config: AugmentConfig, rand: _Draw) -> tuple[Tensor, Tensor]:
    if config.flip_p > 0:
        for dim in (-1, -2):  # horizontal, then vertical
            chosen = rand.chosen(config.flip_p)
            image, maps = _where(chosen, image.flip(dim), image), _where(chosen, maps.flip(dim), maps)
    if config.rotate90_p > 0:
        if image.shape[-1] != image.shape[-2]:
            raise ValueError(
                f"augment_batch: AugmentConfig.rotate90_p > 0 needs square tiles, got H, W = {tuple(image.shape[2:])}"
            )
        turns = torch.where(rand.chosen(config.rotate90_p), rand.integers(0, 3), 0)
        image, maps = image.clone(), maps.clone()
        for k in (1, 2, 3):
            idx = (turns == k).nonzero().flatten()
            if idx.numel():
                image[idx] = torch.rot90(image[idx], k, dims=(-2, -1))
                maps[idx] = torch.rot90(maps[idx], k, dims=(-2, -1))
    if config.shift_scale_rotate_p > 0:
        chosen = rand.chosen(config.shift_scale_rotate_p)
        idx = chosen.nonzero().flatten()
        if idx.numel():
            theta = _affine_theta(config, rand, image.shape[-2], image.shape[-1])[idx]
            image, maps = image.clone(), maps.clone()
            grid = F.affine_grid(theta, [idx.numel(), 1, *image.shape[-2:]], align_corners=False)
            image[idx] = F.grid_sample(image[idx], grid, mode="bilinear", padding_mode="zeros", align_corners=False)
            maps[idx] = F.grid_sample(maps[idx], grid, mode="nearest", padding_mode="zeros", align_corners=False)
    return image, maps


def _affine_theta(config: AugmentConfig, rand: _Draw, height: int, width: int) -> Tensor:
    """``[B, 2, 3]`` grid_sample matrices: output pixel → input pixel, in normalised coordinates.

    The forward map in pixels is ``p_out = c + R S (p_in - c) + t``; grid_sample needs its inverse,
    ``p_in = c + M (p_out - c - t)`` with ``M = S^-1 R^-1``, written in coordinates scaled by ``N = diag(2/W, 2/H)``.
    """
    shift = rand.uniform(-config.shift_limit, config.shift_limit, 2)  # x, y as fractions of the tile
    scale = rand.uniform(1.0 - config.scale_limit, 1.0 + config.scale_limit, 2)
    angle = rand.uniform(-config.rotate_limit, config.rotate_limit) * (math.pi / 180.0)
    cos, sin = torch.cos(angle), torch.sin(angle)
    inv_rot = torch.stack([torch.stack([cos, sin], -1), torch.stack([-sin, cos], -1)], -2)  # R^-1
    m = inv_rot / scale[:, :, None]  # S^-1 R^-1: row i divided by scale_i
    size = torch.tensor([width, height], dtype=m.dtype, device=m.device)
    norm = 2.0 / size
    linear = norm[None, :, None] * m / norm[None, None, :]  # N M N^-1
    t_pixels = shift * size
    offset = -(linear @ (norm * t_pixels)[:, :, None])  # -N M t
    return torch.cat([linear, offset], dim=2)


def _photometric(image: Tensor, config: AugmentConfig, rand: _Draw) -> Tensor:
    if config.brightness_contrast_p > 0:
        chosen = rand.chosen(config.brightness_contrast_p)
        alpha = torch.where(chosen, 1.0 + rand.uniform(-config.contrast_limit, config.contrast_limit), 1.0)
        beta = torch.where(chosen, rand.uniform(-config.brightness_limit, config.brightness_limit), 0.0)
        image = (image * alpha.view(-1, 1, 1, 1).to(image.dtype) + beta.view(-1, 1, 1, 1).to(image.dtype)).clamp(0, 1)
    if config.blur_p > 0:
        image = _blur(image, config, rand)
    if config.noise_p > 0:
        std = torch.where(rand.chosen(config.noise_p), rand.uniform(0.0, config.noise_std), 0.0)
        image = image + rand.normal(tuple(image.shape)).to(image.dtype) * std.view(-1, 1, 1, 1).to(image.dtype)
        image = image.clamp(0, 1)
    if config.coarse_dropout_p > 0:
        image = image * ~_holes(image, config, rand)[:, None]
    return image


def _blur(image: Tensor, config: AugmentConfig, rand: _Draw) -> Tensor:
    """Gaussian or centred motion blur per chosen sample (a delta kernel for the others), one grouped conv."""
    batch, depth, height, width = image.shape
    limit = config.blur_limit if config.blur_limit % 2 else config.blur_limit - 1
    chosen = rand.chosen(config.blur_p)
    motion = rand.chosen(0.5)
    # Kernel sizes as albumentations draws them: gaussian an integer in [3, limit] made odd (5 twice as often as 3
    # for limit 5), motion an odd size uniformly.
    gauss_size = rand.integers(3, limit)
    gauss_size = gauss_size + (gauss_size % 2 == 0)
    motion_size = 2 * rand.integers(1, (limit - 1) // 2) + 1
    sigma = rand.uniform(*_SIGMA_RANGE)
    angle = rand.uniform(0.0, 2 * math.pi)
    half = limit // 2
    coords = torch.arange(-half, half + 1, device=image.device, dtype=torch.float32)
    yy, xx = torch.meshgrid(coords, coords, indexing="ij")
    reach = (gauss_size // 2)[:, None, None]
    inside = (yy.abs()[None] <= reach) & (xx.abs()[None] <= reach)
    gauss = torch.exp(-(xx**2 + yy**2)[None] / (2 * sigma[:, None, None] ** 2)) * inside
    line = _motion_kernels(motion_size, angle, limit)
    kernel = torch.where(motion[:, None, None], line, gauss)
    delta = torch.zeros_like(kernel[0])
    delta[half, half] = 1.0
    kernel = torch.where(chosen[:, None, None], kernel / kernel.sum((1, 2), keepdim=True), delta)
    weight = kernel.to(image.dtype).repeat_interleave(depth, dim=0)[:, None]  # [B*D, 1, k, k]
    padded = F.pad(image.reshape(1, batch * depth, height, width), (half,) * 4, mode="reflect")
    blurred = F.conv2d(padded, weight, groups=batch * depth).reshape(batch, depth, height, width)
    return blurred.clamp(0, 1)


def _motion_kernels(size: Tensor, angle: Tensor, limit: int) -> Tensor:
    """``[B, limit, limit]`` centred line kernels: ``size`` points at even steps along ``angle``, rounded to pixels."""
    half = limit // 2
    steps = torch.arange(limit, device=size.device, dtype=torch.float32)[None]
    reach = (size // 2).float()[:, None]
    t = -reach + steps * (2 * reach / (size - 1).float()[:, None])
    t = torch.where(steps < size[:, None], t, -reach)  # points past the sample's size repeat its first one
    x = torch.round(half + torch.cos(angle)[:, None] * t).long().clamp(0, limit - 1)
    y = torch.round(half + torch.sin(angle)[:, None] * t).long().clamp(0, limit - 1)
    kernel = torch.zeros((len(size), limit * limit), device=size.device)
    kernel.scatter_(1, y * limit + x, 1.0)
    return kernel.view(-1, limit, limit)


def _holes(image: Tensor, config: AugmentConfig, rand: _Draw) -> Tensor:
    """``[B, H, W]`` bool: the coarse-dropout holes of the chosen samples."""
    _, _, height, width = image.shape
    chosen = rand.chosen(config.coarse_dropout_p)
    count = rand.integers(1, config.coarse_dropout_holes)
    low, high = config.coarse_dropout_size / 4, config.coarse_dropout_size
    rows = torch.arange(height, device=image.device)[None, :, None]
    cols = torch.arange(width, device=image.device)[None, None, :]
    holes = torch.zeros((image.shape[0], height, width), dtype=torch.bool, device=image.device)
    for hole in range(config.coarse_dropout_holes):
        active = chosen & (hole < count)
        h = (rand.uniform(low, high) * height).long().clamp(min=1)
        w = (rand.uniform(low, high) * width).long().clamp(min=1)
        y0 = (rand.uniform(0.0, 1.0) * (height - h + 1)).long()
        x0 = (rand.uniform(0.0, 1.0) * (width - w + 1)).long()
        inside = (rows >= y0[:, None, None]) & (rows < (y0 + h)[:, None, None])
        inside = inside & (cols >= x0[:, None, None]) & (cols < (x0 + w)[:, None, None])
        holes |= inside & active[:, None, None]
    return holes


def _depth(image: Tensor, config: AugmentConfig, rand: _Draw) -> Tensor:
    depth = image.shape[1]
    if config.slice_dropout_p > 0:
        chosen = rand.chosen(config.slice_dropout_p)
        count = torch.where(chosen, rand.integers(1, min(config.slice_dropout_max, depth)), 0)
        rank = torch.argsort(rand.uniform(0.0, 1.0, depth), dim=1).argsort(dim=1)  # a random permutation
        dropped = rank < count[:, None]
        image = image * ~dropped[:, :, None, None]
    if config.depth_reverse_p > 0:
        image = _where(rand.chosen(config.depth_reverse_p), image.flip(1), image)
    return image
