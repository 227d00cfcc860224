"""The data module's settings, grouped by concern: ``--data.<group>.<key>`` on the command line, one block each in YAML.

Each group is a frozen dataclass, documented and checked here, once. `InkDataModule` takes the groups (and
``data_dir``, ``augment``, ``labels``); `group_flat_settings` maps the flat keys of earlier versions (``z_start``,
``tile_size``, ``demo_size`` ...) into them, so old configs, command lines, checkpoints and Python calls keep
working.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from datamodules.reading.chunk_cache import DEFAULT_CHUNK_CACHE_MB
from datamodules.reading.fragment import DEFAULT_Z_END, DEFAULT_Z_START
from datamodules.reading.intensity import check_normalization
from datamodules.reading.layer_window import check_depth_settings
from datamodules.reading.layouts import FragmentId, fragment_ids
from datamodules.samplers import check_ink_ratio
from utils.checks import check_int


@dataclass(frozen=True)
class SplitConfig:
    """Which fragments train, validate, test and are predicted (``--data.splits.*``).

    Attributes:
        train_fragments: fragment ids to train on; default: all not held out whole. Numbers (``20230530164535``)
            are read as their digits.
        val_fragments: fragments to validate on. A fragment also in ``train_fragments`` is split by region (or by
            its validation mask).
        test_fragments: fragments to test on (same rule); without a test split, test uses the validation split.
        predict_fragments: fragments to predict; default: every fragment in ``predict_dir``.
        predict_dir: folder (or manifest) of fragments to predict; default ``data_dir``.
        folds: bands a region split cuts a fragment into, along its longer axis.
        val_fold: band held out for validation in region splits (None: no region validation).
        test_fold: band held out for test in region splits (None: none).
        split_gap: pixels between held-out bands and any (jittered) training window; default ``tiles.tile_size``.
    """

    train_fragments: list[FragmentId] | None = None
    val_fragments: list[FragmentId] | None = None
    test_fragments: list[FragmentId] | None = None
    predict_fragments: list[FragmentId] | None = None
    predict_dir: str | None = None
    folds: int = 5
    val_fold: int | None = 0
    test_fold: int | None = None
    split_gap: int | None = None

    def __post_init__(self) -> None:
        for name in ("train_fragments", "val_fragments", "test_fragments", "predict_fragments"):
            object.__setattr__(self, name, fragment_ids(getattr(self, name)))


@dataclass(frozen=True)
class WindowConfig:
    """The slices the model sees (``--data.window.*``).

    Attributes:
        z_start: first slice. Default 15: 30 slices around the middle of 65, covering the winners' choices.
        z_end: one past the last slice; ``z_end - z_start`` is the model's input depth ``num_slices``.
        z_window: ``fixed``: every fragment reads ``[z_start, z_end)``; ``auto``: each fragment reads
            ``z_end - z_start`` layers centred on the papyrus surface found on its depth profile.
        reverse_depth: fragment ids stored with reversed depth order, or ``"auto"`` (detected from the profile).
    """

    z_start: int = DEFAULT_Z_START
    z_end: int = DEFAULT_Z_END
    z_window: str = "fixed"
    reverse_depth: list[FragmentId] | str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.reverse_depth, str):
            object.__setattr__(self, "reverse_depth", fragment_ids(self.reverse_depth))
        if self.z_start < 0 or self.z_end <= self.z_start:
            raise ValueError(f"z_start={self.z_start}, z_end={self.z_end}: need 0 <= z_start < z_end")
        check_depth_settings(self.z_window, self.reverse_depth)


@dataclass(frozen=True)
class TileConfig:
    """Tiles and how training draws them (``--data.tiles.*``).

    Attributes:
        tile_size: tile edge in pixels.
        stride: training window step (windows are also jittered by up to ±stride/2 each epoch); default
            ``tile_size // 2``.
        eval_stride: step of the overlapping validation/test/predict windows; default ``tile_size // 4``.
        min_valid_fraction: training windows need at least this fraction inside the mask.
        ink_ratio: fraction of training tiles drawn from tiles holding ink (< 1); None draws uniformly.
        samples_per_epoch: training tiles per epoch (all ranks together).
        jitter: move training windows randomly each epoch.
        seed: seed of the training tile sampler.
    """

    tile_size: int = 256
    stride: int | None = None
    eval_stride: int | None = None
    min_valid_fraction: float = 0.5
    ink_ratio: float | None = None
    samples_per_epoch: int = 4096
    jitter: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("tile_size", "samples_per_epoch"):
            check_int(name, getattr(self, name), minimum=1, allow_numpy=True)
        for name in ("stride", "eval_stride"):
            if getattr(self, name) is not None:
                check_int(name, getattr(self, name), minimum=1, allow_numpy=True)
        if not 0.0 <= self.min_valid_fraction <= 1.0:
            raise ValueError(f"min_valid_fraction={self.min_valid_fraction}: must be in [0, 1]")
        check_ink_ratio(self.ink_ratio)

    @property
    def train_stride(self) -> int:
        """The training window step, default applied."""
        return self.stride or max(1, self.tile_size // 2)

    @property
    def eval_step(self) -> int:
        """The evaluation window step, default applied."""
        return self.eval_stride or max(1, self.tile_size // 4)


@dataclass(frozen=True)
class LoaderConfig:
    """Batches and DataLoader workers (``--data.loader.*``).

    Attributes:
        batch_size: training batch size per process.
        eval_batch_size: validation/test/predict batch size; default ``batch_size``.
        num_workers: DataLoader worker processes; default: the CPUs available less one per training process on
            this machine, split between those processes, at most 8 (`datamodules.loaders`).
        pin_memory: page-locked batches for faster copies; default: on when training on CUDA.
        persistent_workers: keep the workers alive between epochs and across validations.
        prefetch_factor: batches each worker prepares ahead.
    """

    batch_size: int = 16
    eval_batch_size: int | None = None
    num_workers: int | None = None
    pin_memory: bool | None = None
    persistent_workers: bool = True
    prefetch_factor: int = 2

    def __post_init__(self) -> None:
        check_int("batch_size", self.batch_size, minimum=1, allow_numpy=True)
        if self.eval_batch_size is not None:
            check_int("eval_batch_size", self.eval_batch_size, minimum=1)
        if self.num_workers is not None:
            check_int("num_workers", self.num_workers, minimum=0)
        check_int("prefetch_factor", self.prefetch_factor, minimum=1)


@dataclass(frozen=True)
class StorageConfig:
    """Where caches go and how intensities are normalised (``--data.storage.*``).

    Attributes:
        cache_dir: where converted slices, map caches and intensity ranges go; default ``<fragment>/.ink_cache``.
        chunk_cache_mb: MiB of decoded zarr chunks each process keeps, least recently used evicted.
        normalization: ``fragment``: each fragment's ``intensity_percentiles`` inside the mask and slice window map
            to 0 and 1 (computed once, cached); ``dtype``: divide by 65535 / 255.
        intensity_percentiles: the low and high percentiles of ``fragment`` normalisation.
    """

    cache_dir: str | None = None
    chunk_cache_mb: int = DEFAULT_CHUNK_CACHE_MB
    normalization: str = "fragment"
    intensity_percentiles: tuple[float, float] = (0.5, 99.5)

    def __post_init__(self) -> None:
        object.__setattr__(self, "intensity_percentiles", tuple(self.intensity_percentiles))
        check_normalization(self.normalization, *self.intensity_percentiles)


@dataclass(frozen=True)
class DemoConfig:
    """Synthetic demo fragments made in ``data_dir`` when it holds none (``--data.demo.*``).

    Attributes:
        enabled: make them (only into a missing, empty or demo folder, never beside other data).
        size: height and width of each demo fragment.
        fragments: number of demo fragments.
        ink_contrast: the demo ink's peak brightness (fraction of the dtype's range; the per-pixel noise is 0.022):
            strong enough for a CPU run to learn in minutes, too faint for a single-slice threshold (README).
    """

    enabled: bool = False
    size: int = 384
    fragments: int = 2
    ink_contrast: float = 0.10


@dataclass(frozen=True)
class PseudoConfig:
    """Pseudo-labelled segments trained beside the labelled fragments (``--data.pseudo.*``).

    A label set is what ``scripts/pseudo_label.py`` writes: a folder holding ``pseudo_labels.yaml`` (a manifest
    pointing at the original volumes and masks, with the teacher's labels and its trusted pixels as supervision
    maps). Its segments join the training split only: validation, the threshold and checkpoint choice stay on real
    labels. Untrusted pixels are out of the loss (the supervision map).

    Attributes:
        folder: the label set (its folder or its manifest); None: train on labelled fragments only.
        weight: loss weight of a pseudo-labelled pixel, a labelled one weighing 1 (in (0, 1]: pseudo-labels count
            less by default).
        soft: train on the teacher's probabilities where trusted (ink at least 0.5) instead of 0/1.
        share: fraction of each epoch's training tiles drawn from pseudo-labelled segments; None: in proportion
            to their tiles (plentiful unlabelled segments would then crowd the labelled ones out). Default half.
        fragments: the label set's segments to use; default all.
    """

    folder: str | None = None
    weight: float = 0.5
    soft: bool = False
    share: float | None = 0.5
    fragments: list[FragmentId] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "fragments", fragment_ids(self.fragments))
        if not (isinstance(self.weight, (int, float)) and 0.0 < self.weight <= 1.0):
            raise ValueError(f"data.pseudo.weight={self.weight!r}: must be in (0, 1] (a labelled pixel weighs 1)")
        if self.share is not None and not 0.0 <= self.share <= 1.0:
            raise ValueError(f"data.pseudo.share={self.share!r}: must be in [0, 1] or None (in proportion to tiles)")


@dataclass(frozen=True)
class DataSettings:
    """The groups an `InkDataModule` was built with (``datamodule.settings.window.z_start``)."""

    splits: SplitConfig
    window: WindowConfig
    tiles: TileConfig
    loader: LoaderConfig
    storage: StorageConfig
    demo: DemoConfig
    pseudo: PseudoConfig


GROUPS: dict[str, type] = {
    "splits": SplitConfig,
    "window": WindowConfig,
    "tiles": TileConfig,
    "loader": LoaderConfig,
    "storage": StorageConfig,
    "demo": DemoConfig,
    "pseudo": PseudoConfig,
}
NEW_GROUPS = ("pseudo",)  # groups without flat keys (they came after the flat settings)

# Flat keys of earlier versions -> (group, key).
FLAT_KEYS: dict[str, tuple[str, str]] = {
    **{
        f.name: (group, f.name)
        for group, cls in GROUPS.items()
        if group not in ("demo", *NEW_GROUPS)
        for f in dataclasses.fields(cls)
    },
    "demo": ("demo", "enabled"),
    "demo_size": ("demo", "size"),
    "demo_fragments": ("demo", "fragments"),
    "demo_ink_contrast": ("demo", "ink_contrast"),
}


def group_flat_settings(settings: Mapping[str, Any]) -> dict[str, Any]:
    """Settings with the flat keys of earlier versions moved into their groups (as plain dicts).

    A group given both whole and by flat keys is merged, the flat keys winning. Keys of neither kind are kept.
    """
    grouped: dict[str, Any] = {}
    moved: dict[str, dict[str, Any]] = {}
    for key, value in settings.items():
        if key in FLAT_KEYS and not (key == "demo" and isinstance(value, (Mapping, DemoConfig))):
            group, name = FLAT_KEYS[key]
            moved.setdefault(group, {})[name] = value
        else:
            grouped[key] = value
    for group, values in moved.items():
        current = grouped.get(group)
        if dataclasses.is_dataclass(current):
            current = dataclasses.asdict(current)
        grouped[group] = {**(current or {}), **values}
    return grouped


def as_group(name: str, value: object) -> object:
    """A group given as a dataclass, a mapping (a config's block) or None, as its dataclass."""
    cls = GROUPS[name]
    if value is None:
        return cls()
    if isinstance(value, cls):
        return value
    if isinstance(value, Mapping):
        unknown = sorted(set(value) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ValueError(f"data.{name} has no setting(s) {unknown}")
        return cls(**value)
    raise ValueError(f"data.{name} must be a {cls.__name__} or a mapping, got {type(value).__name__}")
