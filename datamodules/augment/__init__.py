"""Training augmentation: the settings (`AugmentConfig`, ``--data.augment.*``), the per-tile albumentations
pipeline on the CPU and the same augmentation on whole batches in torch on the device."""

from datamodules.augment.batch_augment import augment_batch
from datamodules.augment.transforms import AugmentConfig, TileTransform, normalise

__all__ = [
    "AugmentConfig",
    "TileTransform",
    "augment_batch",
    "normalise",
]
