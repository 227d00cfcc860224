"""augment_batch (the torch backend): each transform does what its AugmentConfig keys say, keeps label and valid with
the image, and the whole default pipeline changes tiles the way the albumentations path does."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from scipy import ndimage

from datamodules.augment.batch_augment import augment_batch
from datamodules.augment.transforms import AugmentConfig, TileTransform
from datamodules.ink_datamodule import InkDataModule
from tests.test_transforms import NONE

B, D, S = 16, 6, 48


def only(**kwargs: object) -> AugmentConfig:
    return AugmentConfig(**{**NONE, "backend": "torch", **kwargs})


def blobs(seed: int = 0, batch: int = B) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Smooth random ink blobs; slice 0 of the image is the label itself, so image and label can be compared."""
    rng = np.random.default_rng(seed)
    field = ndimage.gaussian_filter(rng.normal(size=(batch, S, S)), sigma=(0, 4, 4))
    label = (field > 0.02).astype(np.float32)[:, None]
    image = rng.uniform(0.2, 0.8, size=(batch, D, S, S)).astype(np.float32)
    image[:, 0] = label[:, 0]
    return torch.from_numpy(image), torch.from_numpy(label), torch.ones_like(torch.from_numpy(label))


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_disabled_or_all_off_changes_nothing() -> None:
    image, label, valid = blobs()
    out = augment_batch(image, label, valid, AugmentConfig(enabled=False, backend="torch"))
    assert all(a is b for a, b in zip(out, (image, label, valid)))
    out = augment_batch(image, label, valid, only(), gen())
    for a, b in zip(out, (image, label, valid)):
        assert torch.equal(a, b)


def test_flips_and_rot90_move_all_three_together_exactly() -> None:
    image, label, valid = blobs()
    valid = (torch.rand_like(valid) > 0.3).float()
    out_image, out_label, out_valid = augment_batch(image, label, valid, only(flip_p=0.5, rotate90_p=1.0), gen(1))
    seen = set()
    for i in range(B):
        match = [
            (h, v, k)
            for h in (0, 1)
            for v in (0, 1)
            for k in range(4)
            if torch.equal(out_image[i], _geo(image[i], h, v, k))
        ]
        assert match, f"sample {i} is not a flip/rotation of its input"
        h, v, k = match[0]
        assert torch.equal(out_label[i], _geo(label[i], h, v, k)) and torch.equal(out_valid[i], _geo(valid[i], h, v, k))
        seen.add((h, v, k % 2))
    assert len(seen) > 3  # the draws differ between samples


def _geo(x: torch.Tensor, h: int, v: int, k: int) -> torch.Tensor:
    if h:
        x = x.flip(-1)
    if v:
        x = x.flip(-2)
    return torch.rot90(x, k, dims=(-2, -1))


def test_affine_keeps_label_on_image_and_invalidates_what_comes_from_outside() -> None:
    image, label, valid = blobs(2)
    config = only(shift_scale_rotate_p=1.0, shift_limit=0.2, scale_limit=0.2, rotate_limit=45.0)
    out_image, out_label, out_valid = augment_batch(image, label, valid, config, gen(2))
    assert not torch.equal(out_label, label)
    assert set(out_label.unique().tolist()) <= {0.0, 1.0} and set(out_valid.unique().tolist()) <= {0.0, 1.0}
    outside = out_valid == 0
    assert outside.any() and (out_valid == 1).any()
    assert torch.all(out_image[:, :1][outside] < 0.51)  # zero fill (bilinear blends only at the border)
    inside = out_valid.bool()
    mismatch = (out_image[:, :1] - out_label).abs()[inside].mean().item()
    assert mismatch < 0.06, mismatch  # the label moved with the image (bilinear vs nearest at blob edges only)
    moved = (out_label != label).float().mean().item()
    assert moved > 0.05


def test_affine_with_zero_limits_is_the_identity() -> None:
    image, label, valid = blobs(3)
    config = only(shift_scale_rotate_p=1.0, shift_limit=0.0, scale_limit=0.0, rotate_limit=0.0)
    out = augment_batch(image, label, valid, config, gen(3))
    for a, b in zip(out, (image, label, valid)):
        assert torch.allclose(a, b, atol=1e-5)


def test_brightness_contrast_is_a_clipped_linear_map_within_its_limits() -> None:
    image = torch.rand(B, D, S, S, generator=gen(4)) * 0.2 + 0.4  # stays inside [0, 1] after the change
    label = valid = torch.ones(B, 1, S, S)
    config = only(brightness_contrast_p=1.0, brightness_limit=0.1, contrast_limit=0.2)
    out, out_label, _ = augment_batch(image, label, valid, config, gen(4))
    assert torch.equal(out_label, label)
    for i in range(B):
        x, y = image[i].flatten().double(), out[i].flatten().double()
        alpha = ((x - x.mean()) * (y - y.mean())).sum() / ((x - x.mean()) ** 2).sum()
        beta = y.mean() - alpha * x.mean()
        assert 0.8 - 1e-4 <= alpha <= 1.2 + 1e-4 and -0.1 - 1e-4 <= beta <= 0.1 + 1e-4
        assert torch.allclose(y, alpha * x + beta, atol=1e-5)


def test_noise_std_is_bounded_and_blur_keeps_constants() -> None:
    image = torch.full((B, D, S, S), 0.5)
    label = valid = torch.ones(B, 1, S, S)
    noisy, _, _ = augment_batch(image, label, valid, only(noise_p=1.0, noise_std=0.1), gen(5))
    stds = (noisy - image).std(dim=(1, 2, 3))
    assert stds.max() <= 0.105 and stds.min() >= 0.0 and stds.std() > 0.01  # each sample its own std
    blurred, _, _ = augment_batch(image, label, valid, only(blur_p=1.0, blur_limit=7), gen(5))
    assert torch.allclose(blurred, image, atol=1e-5)
    impulse = torch.zeros(B, D, S, S)
    impulse[:, :, S // 2, S // 2] = 1.0
    spread, _, _ = augment_batch(impulse, label, valid, only(blur_p=1.0, blur_limit=7), gen(6))
    assert torch.allclose(spread.sum(dim=(2, 3)), torch.ones(B, D), atol=1e-4)  # mass kept
    support = (spread[:, 0] > 1e-6).flatten(1).sum(1)
    assert support.min() >= 2 and support.max() <= 49  # within a 7 x 7 kernel


def test_coarse_dropout_blanks_rectangles_of_the_image_only() -> None:
    image, label, valid = blobs(7)
    image = image.clamp(min=0.1)
    config = only(coarse_dropout_p=1.0, coarse_dropout_holes=3, coarse_dropout_size=0.25)
    out, out_label, out_valid = augment_batch(image, label, valid, config, gen(7))
    assert torch.equal(out_label, label) and torch.equal(out_valid, valid)
    holes = out == 0
    assert torch.equal(holes, holes[:, :1].expand_as(holes))  # the same holes in every slice
    fraction = holes[:, 0].float().mean(dim=(1, 2))
    assert fraction.min() > 0 and fraction.max() <= 3 * 0.25**2 + 1e-6
    assert torch.equal(out[~holes], image[~holes])


def test_slice_dropout_and_depth_reversal() -> None:
    image, label, valid = blobs(8)
    image = image.clamp(min=0.1)
    out, _, _ = augment_batch(image, label, valid, only(slice_dropout_p=1.0, slice_dropout_max=2), gen(8))
    blank = (out == 0).all(dim=(2, 3)).sum(dim=1)
    assert blank.min() >= 1 and blank.max() <= 2 and len(set(blank.tolist())) == 2
    out, _, _ = augment_batch(image, label, valid, only(depth_reverse_p=1.0), gen(8))
    assert torch.equal(out, image.flip(1))


def test_same_generator_state_same_batch() -> None:
    image, label, valid = blobs(9)
    config = AugmentConfig(backend="torch")
    first = augment_batch(image, label, valid, config, gen(9))
    second = augment_batch(image, label, valid, config, gen(9))
    third = augment_batch(image, label, valid, config, gen(10))
    assert all(torch.equal(a, b) for a, b in zip(first, second))
    assert not torch.equal(first[0], third[0])


def _both_paths(config: dict[str, object], seed: int = 11) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(torch image, torch valid, albumentations image, albumentations valid)`` for 256 tiles."""
    image, label, valid = blobs(seed, batch=256)
    torch_out = augment_batch(image, label, valid, AugmentConfig(**config, backend="torch"), gen(seed))
    transform = TileTransform(AugmentConfig(**{**config, "depth_shift": 0}), D, train=True)
    rng = np.random.default_rng(seed)
    cpu_out = [
        transform(image[i].numpy().transpose(1, 2, 0), label[i, 0].numpy(), valid[i, 0].numpy(), rng)
        for i in range(len(image))
    ]
    cpu_image = np.stack([o[0] for o in cpu_out]).transpose(0, 3, 1, 2)
    cpu_valid = np.stack([o[2] for o in cpu_out])
    return torch_out[0].numpy(), torch_out[2].numpy()[:, 0], cpu_image, cpu_valid


def test_default_pipeline_changes_tiles_as_the_albumentations_path_does() -> None:
    """Same keys, same meaning: averages over many tiles agree between the two backends."""
    torch_image, torch_valid, cpu_image, cpu_valid = _both_paths({})
    assert cpu_valid.mean() < 0.95  # the affine moved pixels in from outside
    assert abs(torch_valid.mean() - cpu_valid.mean()) < 0.01  # translation, zoom and rotation ranges
    assert abs(torch_image[:, 1:].mean() - cpu_image[:, 1:].mean()) < 0.01  # photometric, dropout
    assert abs(torch_image[:, 1:].std() - cpu_image[:, 1:].std()) < 0.01


def test_blur_is_gaussian_or_motion_equally_often_in_both_paths() -> None:
    """Each kind alone blurs noise to a different std (about 0.05 vs 0.09); their mix must match."""
    torch_image, _, cpu_image, _ = _both_paths({**NONE, "blur_p": 1.0})
    assert abs(torch_image[:, 1:].std() - cpu_image[:, 1:].std()) < 0.004


def test_datamodule_augments_training_batches_only(tmp_path: object) -> None:
    dm = InkDataModule(data_dir=str(tmp_path), augment=AugmentConfig(backend="torch"))
    image, label, valid = blobs(12)
    for training, changed in ((True, True), (False, False)):
        dm.trainer = SimpleNamespace(training=training)
        batch = {"image": image.clone(), "label": label.clone(), "valid": valid.clone()}
        out = dm.on_after_batch_transfer(batch, 0)
        assert (not torch.equal(out["image"], image)) is changed
    dm = InkDataModule(data_dir=str(tmp_path))  # albumentations: the workers already augmented
    dm.trainer = SimpleNamespace(training=True)
    out = dm.on_after_batch_transfer({"image": image.clone(), "label": label, "valid": valid}, 0)
    assert torch.equal(out["image"], image)


def test_unknown_backend_is_named() -> None:
    with pytest.raises(ValueError, match="backend='gpu'.*albumentations, torch"):
        AugmentConfig(backend="gpu")
