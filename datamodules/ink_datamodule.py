"""InkDataModule: streams tiles of memory-mapped fragments for fit, validate, test and predict."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import rank_zero_info, rank_zero_warn
from torch.utils.data import DataLoader

from datamodules.batch_augment import augment_batch
from datamodules.chunk_cache import DEFAULT_CHUNK_CACHE_MB
from datamodules.demo_folder import check_demo_folder, has_fragments
from datamodules.fragment import DEFAULT_Z_END, DEFAULT_Z_START, Fragment
from datamodules.intensity import check_normalization, intensity_range
from datamodules.label_rules import LabelConfig
from datamodules.layer_window import AUTO, LayerWindow, check_depth_settings, listed_reversed, open_fragment
from datamodules.layouts import FragmentId, discover_sources, fragment_ids, is_manifest
from datamodules.loaders import default_workers, make_loader
from datamodules.samplers import BalancedTileSampler, ShardedEvalSampler, check_ink_ratio
from datamodules.synthetic import make_demo_data
from datamodules.tile_dataset import TileDataset
from datamodules.tiling import Region, TileSet, plan_regions, region_tiles
from datamodules.transforms import AugmentConfig, TileTransform
from modules.band_plan import PredictionLayout
from utils.checks import check_int

# Checkpoints hold the data module's hyperparameters; Lightning loads them with torch's weights-only unpickler.
torch.serialization.add_safe_globals([AugmentConfig, LabelConfig])

_STAGE_SPLIT = {"fit": "val", "validate": "val", "val": "val", "test": "test", "predict": "predict"}


class InkDataModule(pl.LightningDataModule):
    """Tiles of fragment volumes, read window by window from memory-mapped slices.

    Args:
        data_dir: folder of fragment folders (the layouts of `datamodules.layouts`), or a manifest file
            (``.yaml``/``.json``) naming each fragment's files.
        train_fragments: fragment ids to train on; default: all not held out whole. Ids are strings; numbers
            (``[20230530164535]``) are read as their digits.
        val_fragments: fragments to validate on. A fragment also in ``train_fragments`` is split by region.
        test_fragments: fragments to test on (same rule).
        predict_fragments: fragments to predict; default: every fragment in ``predict_dir``.
        predict_dir: folder of fragments to predict; default ``data_dir``.
        z_start: first slice the model sees. Default 15: see ``datamodules.fragment.DEFAULT_Z_START``.
        z_end: one past the last slice. ``z_end - z_start`` is the model's input depth ``num_slices``.
        reverse_depth: fragment names stored with reversed depth order, or ``"auto"``: each fragment whose depth
            profile shows the papyrus at low layer indices is opened reversed (``datamodules/depth_profile.py``).
        z_window: ``fixed``: every fragment reads ``[z_start, z_end)``; ``auto``: each fragment reads
            ``z_end - z_start`` layers centred on the papyrus surface found on its depth profile, in the depth
            order after ``reverse_depth`` (segments come with 21, 65 or 109 layers).
        tile_size: tile edge in pixels.
        stride: training window step (windows are also jittered by up to ±stride/2 each epoch).
        eval_stride: step of the overlapping validation/test/predict windows; default ``tile_size // 4``.
        min_valid_fraction: training windows need at least this fraction inside the mask.
        folds: bands a region split cuts a fragment into.
        val_fold: band held out for validation in region splits (None: no region validation).
        test_fold: band held out for test in region splits (None: none).
        split_gap: pixels between held-out bands and training windows; default ``tile_size``.
        ink_ratio: fraction of training tiles drawn from tiles holding ink (must be < 1); None (the default) draws
            tiles uniformly from the mask. On faint ink, ink_ratio 0.5 slowed learning several-fold (README).
        samples_per_epoch: training tiles per epoch (all ranks together).
        jitter: move training windows randomly each epoch.
        batch_size: training batch size per process.
        eval_batch_size: validation/test/predict batch size; default ``batch_size``.
        num_workers: DataLoader worker processes; default: the CPUs available less one per training process on
            this machine, split between those processes, at most 8 (``datamodules/loaders.py``).
        pin_memory: page-locked batches for faster copies; default: on when training on CUDA.
        persistent_workers: keep the workers alive between epochs and across validations.
        prefetch_factor: batches each worker prepares ahead.
        augment: training augmentation settings.
        labels: how label maps are read: ``threshold`` (ink at or above this fraction of full scale), ``soft``
            (train on grey levels / 255), ``unknown`` (a level left out of loss and scores); see
            `datamodules.label_rules`.
        cache_dir: where compressed or tiled slices are converted to; default ``<fragment>/.ink_cache``.
        chunk_cache_mb: MiB of decoded zarr chunks each process (main, every worker) keeps, least recently used
            evicted; unused for TIFF fragments.
        normalization: ``fragment``: each fragment's ``intensity_percentiles`` inside the mask and slice window
            map to 0 and 1 (computed once, cached; scans differ in brightness); ``dtype``: divide by 65535 / 255.
        intensity_percentiles: the low and high percentiles of ``fragment`` normalisation.
        demo: make synthetic demo fragments in ``data_dir`` if it holds none.
        demo_size: height and width of each demo fragment.
        demo_fragments: number of demo fragments.
        demo_ink_contrast: the demo ink's peak brightness (fraction of the dtype's range; the per-pixel noise is
            0.022). 0.10 keeps the best single-slice threshold at F0.5 0.2-0.3 yet lets a CPU run learn in minutes.
        seed: seed of the training tile sampler.
    """

    def __init__(
        self,
        data_dir: str = "data/demo",
        train_fragments: list[FragmentId] | None = None,
        val_fragments: list[FragmentId] | None = None,
        test_fragments: list[FragmentId] | None = None,
        predict_fragments: list[FragmentId] | None = None,
        predict_dir: str | None = None,
        z_start: int = DEFAULT_Z_START,
        z_end: int = DEFAULT_Z_END,
        reverse_depth: list[FragmentId] | str | None = None,
        z_window: str = "fixed",
        tile_size: int = 256,
        stride: int | None = None,
        eval_stride: int | None = None,
        min_valid_fraction: float = 0.5,
        folds: int = 5,
        val_fold: int | None = 0,
        test_fold: int | None = None,
        split_gap: int | None = None,
        ink_ratio: float | None = None,
        samples_per_epoch: int = 4096,
        jitter: bool = True,
        batch_size: int = 16,
        eval_batch_size: int | None = None,
        num_workers: int | None = None,
        pin_memory: bool | None = None,
        persistent_workers: bool = True,
        prefetch_factor: int = 2,
        augment: AugmentConfig = AugmentConfig(),  # noqa: B008 - a frozen default, copied below
        labels: LabelConfig = LabelConfig(),  # noqa: B008 - frozen
        cache_dir: str | None = None,
        chunk_cache_mb: int = DEFAULT_CHUNK_CACHE_MB,
        normalization: str = "fragment",
        intensity_percentiles: tuple[float, float] = (0.5, 99.5),
        demo: bool = False,
        demo_size: int = 384,
        demo_fragments: int = 2,
        demo_ink_contrast: float = 0.10,
        seed: int = 0,
    ) -> None:
        super().__init__()
        # Segment ids are strings however typed (20230530164535 in YAML or on the command line is a number);
        # normalised before save_hyperparameters, so checkpoints and configs hold strings.
        train_fragments, val_fragments, test_fragments, predict_fragments = (
            fragment_ids(ids) for ids in (train_fragments, val_fragments, test_fragments, predict_fragments)
        )
        if not isinstance(reverse_depth, str):
            reverse_depth = fragment_ids(reverse_depth)
        if not isinstance(labels, LabelConfig):
            raise ValueError(f"labels must be a LabelConfig, got {type(labels).__name__}")
        _check_positive(tile_size=tile_size, batch_size=batch_size, samples_per_epoch=samples_per_epoch)
        if z_start < 0 or z_end <= z_start:
            raise ValueError(f"z_start={z_start}, z_end={z_end}: need 0 <= z_start < z_end")
        check_depth_settings(z_window, reverse_depth)
        if not 0.0 <= min_valid_fraction <= 1.0:
            raise ValueError(f"min_valid_fraction={min_valid_fraction}: must be in [0, 1]")
        check_ink_ratio(ink_ratio)
        check_normalization(normalization, *intensity_percentiles)
        if num_workers is not None:
            check_int("num_workers", num_workers, minimum=0)
        check_int("prefetch_factor", prefetch_factor, minimum=1)
        self.stride = stride or max(1, tile_size // 2)
        self.eval_stride = eval_stride or max(1, tile_size // 4)
        _check_positive(stride=self.stride, eval_stride=self.eval_stride)
        self.save_hyperparameters()
        # LightningCLI hands save_hyperparameters the values as parsed: store the ids as strings here too.
        self.hparams.update(
            train_fragments=train_fragments,
            val_fragments=val_fragments,
            test_fragments=test_fragments,
            predict_fragments=predict_fragments,
            reverse_depth=reverse_depth,
        )
        self.augment = dataclasses.replace(augment)
        self.labels = labels
        self.data_dir = Path(data_dir)
        self._fragments: list[Fragment] = []
        self._splits: dict[str, TileSet] = {}
        self._predict: list[Fragment] = []
        self._windows: dict[Path, LayerWindow] = {}  # per fragment folder, so each depth profile is read once
        self._predict_selection: np.ndarray | None = None  # this rank's prediction tiles, when a writer plans them

    @property
    def num_slices(self) -> int:
        """Depth of the model's input: ``z_end - z_start``."""
        return self.hparams.z_end - self.hparams.z_start

    @property
    def _depth_margin(self) -> int:
        """Slices read beyond ``[z_start, z_end)`` on each side for the training depth shift."""
        return self.augment.depth_shift if self.augment.enabled else 0

    # ----------------------------------------------------------------------------------------- preparation

    def prepare_data(self) -> None:
        """Makes the demo fragments if asked; converts compressed or tiled slices of the folder the stage reads."""
        hp = self.hparams
        predicting = self.trainer is not None and self.trainer.state.fn == "predict"
        folder = Path(hp.predict_dir) if predicting and hp.predict_dir else self.data_dir
        if hp.demo and folder == self.data_dir and not is_manifest(folder) and not has_fragments(self.data_dir):
            check_demo_folder(self.data_dir, hp.demo_fragments)
            make_demo_data(
                self.data_dir,
                num_fragments=hp.demo_fragments,
                height=hp.demo_size,
                width=hp.demo_size,
                ink_contrast=hp.demo_ink_contrast,
            )
        margin = self._depth_margin
        for fragment in self._open(folder, require_labels=False):
            fragment.prepare_cache(fragment.z_start - margin, fragment.z_end + margin)

    def _open(
        self,
        folder: Path,
        *,
        require_labels: bool,
        names: Sequence[str] | None = None,
        check_reverse: bool = False,
    ) -> list[Fragment]:
        """Opens the fragments of ``folder`` (a folder or a manifest; all, or ``names``); ``check_reverse``: an absent
        ``reverse_depth`` name is a typo, not a fragment of another folder (a checkpoint's ``reverse_depth`` follows
        it to other data)."""
        hp = self.hparams
        paths = discover_sources(folder)
        if names is not None:
            available = {p.id: p for p in paths}
            missing = sorted(set(names) - set(available))
            if missing:
                raise ValueError(f"fragment(s) {missing} not found in '{folder}'; found {sorted(available)}")
            paths = [available[n] for n in names]
        for sources in paths:
            for note in sources.notes:
                rank_zero_info(f"fragment '{sources.id}': {note}")
        reversed_names = listed_reversed(hp.reverse_depth)
        unknown = reversed_names - {p.id for p in paths}
        if unknown and check_reverse:
            raise ValueError(f"reverse_depth names unknown fragment(s) {sorted(unknown)} in '{folder}'")
        fragments = [
            open_fragment(
                p,
                z_start=hp.z_start,
                z_end=hp.z_end,
                z_window=hp.z_window,
                reverse_depth=AUTO if hp.reverse_depth == AUTO else p.id in reversed_names,
                cache_dir=hp.cache_dir,
                chunk_cache_mb=hp.chunk_cache_mb,
                require_labels=require_labels,
                memo=self._windows,
                labels=self.labels,
            )
            for p in paths
        ]
        for fragment in fragments:
            if fragment.height < hp.tile_size or fragment.width < hp.tile_size:
                raise ValueError(
                    f"fragment '{fragment.id}' is {fragment.height}x{fragment.width}, smaller than one tile "
                    f"(tile_size={hp.tile_size})"
                )
            if hp.normalization == "fragment":
                margin = self._depth_margin
                fragment.intensity = intensity_range(
                    fragment, fragment.z_start - margin, fragment.z_end + margin, *hp.intensity_percentiles
                )
        return fragments

    def setup(self, stage: str) -> None:
        """Opens the fragments and lays out the tiles of the splits ``stage`` needs."""
        hp = self.hparams
        if stage == "predict":
            folder = Path(hp.predict_dir) if hp.predict_dir else self.data_dir
            fragments = self._open(folder, require_labels=False, names=hp.predict_fragments)
            whole = [Region(i, 0, ((0, f.height),)) for i, f in enumerate(fragments)]
            self._predict = fragments
            self._predict_selection = None
            self._set_split("predict", fragments, whole, training=False)
            return
        if not self._fragments:
            self._fragments = self._open(self.data_dir, require_labels=False, check_reverse=stage == "fit")
        gap = hp.split_gap if hp.split_gap is not None else hp.tile_size
        plans = plan_regions(
            [f.id for f in self._fragments],
            [(f.height, f.width) for f in self._fragments],
            train_fragments=hp.train_fragments,
            val_fragments=hp.val_fragments,
            test_fragments=hp.test_fragments,
            folds=hp.folds,
            val_fold=hp.val_fold,
            test_fold=hp.test_fold,
            gap=gap,
            tile_size=hp.tile_size,
            has_validation=[f.validation is not None for f in self._fragments],
        )
        for split, training in (("train", True), ("val", False), ("test", False)):
            self._set_split(split, self._fragments, plans[split], training=training)

    def _set_split(self, split: str, fragments: list[Fragment], regions: list[Region], *, training: bool) -> None:
        hp = self.hparams
        if split != "predict":
            for region in regions:
                if fragments[region.fragment].labels is None:
                    fragment = fragments[region.fragment]
                    raise FileNotFoundError(
                        f"fragment '{fragment.id}' is in the {split} split but has no inklabels.png (nor "
                        f"{fragment.id}_inklabels[_vN].png/.tif/.tiff/.zarr) in '{fragment.path}', nor a manifest entry"
                    )
        predicting = split == "predict"  # prediction covers the whole mask, trusted labels or not
        parts = [
            region_tiles(
                region,
                fragments[region.fragment].mask,
                fragments[region.fragment].labels,
                tile_size=hp.tile_size,
                stride=self.stride if training else self.eval_stride,
                min_valid_fraction=hp.min_valid_fraction if training else 0.0,
                supervision=None if predicting else fragments[region.fragment].supervision,
                validation=None if predicting else fragments[region.fragment].validation,
            )
            for region in regions
        ]
        self._splits[split] = TileSet.concat(parts)

    # ----------------------------------------------------------------------------------------- splits

    def _resolve(self, split: str) -> str:
        """The split actually used: ``test`` falls back to ``val`` when no test split is configured."""
        if split == "test" and len(self._splits.get("test", ())) == 0 and len(self._splits.get("val", ())) > 0:
            rank_zero_warn("no test split is configured (test_fragments / test_fold): testing on the validation split")
            return "val"
        return split

    def tiles(self, split: str) -> TileSet:
        """The windows of ``train``, ``val``, ``test`` or ``predict`` (after ``setup``).

        Raises:
            ValueError: the split holds no tile, naming the settings that shape it.
        """
        split = self._resolve(split)
        tiles = self._splits.get(split)
        if tiles is None:
            raise RuntimeError(f"InkDataModule.setup() has not prepared the {split} split yet")
        if len(tiles) == 0:
            raise ValueError(_empty_split_message(split, self.hparams))
        return tiles

    def fragments(self, split: str) -> list[Fragment]:
        """The fragments a split's fragment indices refer to."""
        return self._predict if split == "predict" else self._fragments

    def fragment_shapes(self, stage: str) -> dict[str, tuple[int, int]]:
        """``{fragment_id: (H, W)}`` of every fragment the stage evaluates (``validate``, ``test``, ``predict``)."""
        split = _STAGE_SPLIT.get(stage, stage)
        fragments = self.fragments(split)
        used = sorted(set(self.tiles(split).windows[:, 0].tolist()))
        return {fragments[i].id: (fragments[i].height, fragments[i].width) for i in used}

    def fragment_boxes(self, stage: str) -> dict[str, tuple[int, int, int, int]]:
        """``{fragment_id: (y0, x0, y1, x1)}``: the bounding box of the stage's windows in each fragment.

        Identical on every rank (the windows are); stitching allocates only these boxes (a region split's band).
        """
        split = _STAGE_SPLIT.get(stage, stage)
        fragments, windows, size = self.fragments(split), self.tiles(split).windows, self.hparams.tile_size
        boxes = {}
        for i in sorted(set(windows[:, 0].tolist())):
            mine = windows[windows[:, 0] == i]
            frag = fragments[i]
            y0, x0 = int(mine[:, 1].min()), int(mine[:, 2].min())
            y1, x1 = min(frag.height, int(mine[:, 1].max()) + size), min(frag.width, int(mine[:, 2].max()) + size)
            boxes[frag.id] = (y0, x0, y1, x1)
        return boxes

    def prediction_layout(self) -> PredictionLayout:
        """The segments, tiles and sources of the predict stage (after ``setup("predict")``), for the writer."""
        fragments, tiles = self.fragments("predict"), self.tiles("predict")
        sources = [
            {"path": str(f.path.resolve()), "z": [f.z_start, f.z_end], "reverse_depth": f.reverse_depth}
            for f in fragments
        ]
        shapes = [(f.height, f.width) for f in fragments]
        return PredictionLayout([f.id for f in fragments], shapes, tiles.windows, self.hparams.tile_size, sources)

    def select_predict_tiles(self, indices: Sequence[int] | np.ndarray | None) -> None:
        """Makes this process's predict loader yield exactly these tiles, in this order (None: an even share)."""
        if indices is not None:
            indices = np.asarray(indices, dtype=np.int64)
            total = len(self.tiles("predict"))
            if len(indices) and (indices.min() < 0 or indices.max() >= total):
                raise ValueError(f"select_predict_tiles: indices outside the {total} prediction tiles")
        self._predict_selection = indices

    # ----------------------------------------------------------------------------------------- loaders

    def _rank(self) -> tuple[int, int]:
        trainer = self.trainer
        return (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)

    def _dataset(self, split: str, *, training: bool) -> TileDataset:
        hp = self.hparams
        augment = self.augment if training and self.augment.enabled else None
        return TileDataset(
            self.fragments(split),
            self.tiles(split),
            hp.tile_size,
            TileTransform(augment, self.num_slices, train=training),
            depth_margin=augment.depth_shift if augment is not None else 0,
            jitter=self.stride // 2 if training and hp.jitter else 0,
            with_labels=split != "predict",
            soft_labels=training and self.labels.soft,
        )

    def _loader(self, dataset: TileDataset, sampler: object, batch_size: int) -> DataLoader:
        hp, trainer = self.hparams, self.trainer
        cuda = trainer is not None and trainer.accelerator.__class__.__name__ == "CUDAAccelerator"
        per_machine = trainer.num_devices if trainer is not None else 1
        return make_loader(
            dataset,
            sampler,
            batch_size,
            num_workers=hp.num_workers if hp.num_workers is not None else default_workers(per_machine),
            pin_memory=cuda if hp.pin_memory is None else hp.pin_memory,
            persistent_workers=hp.persistent_workers,
            prefetch_factor=hp.prefetch_factor,
        )

    def on_after_batch_transfer(self, batch: dict, dataloader_idx: int) -> dict:
        """With ``augment.backend: torch``, augments training batches here, on the device they were sent to."""
        trainer = self.trainer
        training = trainer is not None and trainer.training
        if training and self.augment.enabled and self.augment.backend == "torch":
            batch["image"], batch["label"], batch["valid"] = augment_batch(
                batch["image"], batch["label"], batch["valid"], self.augment
            )
        return batch

    def train_dataloader(self) -> DataLoader:
        hp = self.hparams
        dataset = self._dataset("train", training=True)
        world, rank = self._rank()
        sampler = BalancedTileSampler(
            dataset, hp.samples_per_epoch, hp.ink_ratio, num_replicas=world, rank=rank, seed=hp.seed
        )
        return self._loader(dataset, sampler, hp.batch_size)

    def _eval_loader(self, split: str) -> DataLoader:
        dataset = self._dataset(split, training=False)
        world, rank = self._rank()
        chosen = self._predict_selection if split == "predict" else None
        sampler = ShardedEvalSampler(dataset, num_replicas=world, rank=rank, indices=chosen)
        return self._loader(dataset, sampler, self.hparams.eval_batch_size or self.hparams.batch_size)

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader("test")

    def predict_dataloader(self) -> DataLoader:
        return self._eval_loader("predict")


def _check_positive(**settings: int) -> None:
    for name, value in settings.items():
        check_int(name, value, minimum=1, allow_numpy=True)


def _empty_split_message(split: str, hp: object) -> str:
    name = {"train": "training", "val": "validation", "test": "test", "predict": "prediction"}[split]
    hints = {
        "train": "set train_fragments, or lower min_valid_fraction / tile_size, or check the masks",
        "val": "set val_fragments or val_fold (val_fold=None disables region validation)",
        "test": "set test_fragments or test_fold",
        "predict": "set predict_dir / predict_fragments",
    }[split]
    return (
        f"the {name} split is empty (tile_size={hp.tile_size}, folds={hp.folds}, val_fold={hp.val_fold}, "
        f"test_fold={hp.test_fold}, min_valid_fraction={hp.min_valid_fraction}): {hints}"
    )
