"""InkDataModule: streams tiles of memory-mapped fragments for fit, validate, test and predict."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import rank_zero_info, rank_zero_warn
from torch.utils.data import DataLoader

from datamodules.augment.batch_augment import augment_batch
from datamodules.augment.transforms import AugmentConfig, TileTransform
from datamodules.loaders import default_workers, make_loader
from datamodules.pseudo.label_set import PSEUDO_LABEL_RULES, label_set_manifest
from datamodules.reading.fragment import Fragment
from datamodules.reading.intensity import intensity_range
from datamodules.reading.label_rules import LabelConfig
from datamodules.reading.layer_window import AUTO, LayerWindow, listed_reversed, open_fragment
from datamodules.reading.layouts import discover_sources, is_manifest
from datamodules.samplers import BalancedTileSampler, ShardedEvalSampler
from datamodules.settings import (
    GROUPS,
    DataSettings,
    DemoConfig,
    LoaderConfig,
    PseudoConfig,
    SplitConfig,
    StorageConfig,
    TileConfig,
    WindowConfig,
    as_group,
    group_flat_settings,
)
from datamodules.synthetic import make_demo_data
from datamodules.synthetic.demo_folder import check_demo_folder, has_fragments
from datamodules.tile_dataset import TileDataset
from datamodules.tiling import Region, TileSet, plan_regions, region_tiles
from modules.prediction.band_plan import PredictionLayout

# Checkpoints of earlier versions hold these dataclasses in the data module's hyperparameters (today's hold plain
# dicts); Lightning loads them with torch's weights-only unpickler.
torch.serialization.add_safe_globals([AugmentConfig, LabelConfig])

_STAGE_SPLIT = {"fit": "val", "validate": "val", "val": "val", "test": "test", "predict": "predict"}


class InkDataModule(pl.LightningDataModule):
    """Tiles of fragment volumes, read window by window from memory-mapped slices.

    Settings come in groups, each documented where it is defined (`datamodules.settings`): ``--data.splits.*``,
    ``--data.window.*``, ``--data.tiles.*``, ``--data.loader.*``, ``--data.storage.*``, ``--data.demo.*``,
    ``--data.pseudo.*``, plus ``--data.augment.*`` (`datamodules.augment.transforms.AugmentConfig`) and
    ``--data.labels.*`` (`datamodules.reading.label_rules.LabelConfig`).

    Args:
        data_dir: folder of fragment folders (the layouts of `datamodules.reading.layouts`), or a manifest file
            (``.yaml``/``.json``) naming each fragment's files.
        splits: which fragments train, validate, test and are predicted.
        window: the slices the model sees.
        tiles: tiles and how training draws them.
        loader: batches and DataLoader workers.
        storage: caches and intensity normalisation.
        augment: training augmentation.
        labels: how label maps are read.
        demo: synthetic demo fragments.
        pseudo: pseudo-labelled segments trained beside the labelled fragments (a label set of
            ``scripts/pseudo_label.py``), with their loss weight and share of the draws.
        **flat: the flat settings of earlier versions (``z_start=…``, ``tile_size=…``, ``demo_size=…``), moved into
            their groups (`datamodules.settings.FLAT_KEYS`).

    Raises:
        ValueError: an unknown setting or a value a group rejects, naming it.
    """

    def __init__(
        self,
        data_dir: str = "data/demo",
        splits: SplitConfig = SplitConfig(),  # noqa: B008 - frozen defaults
        window: WindowConfig = WindowConfig(),  # noqa: B008
        tiles: TileConfig = TileConfig(),  # noqa: B008
        loader: LoaderConfig = LoaderConfig(),  # noqa: B008
        storage: StorageConfig = StorageConfig(),  # noqa: B008
        augment: AugmentConfig = AugmentConfig(),  # noqa: B008
        labels: LabelConfig = LabelConfig(),  # noqa: B008
        demo: DemoConfig = DemoConfig(),  # noqa: B008
        pseudo: PseudoConfig = PseudoConfig(),  # noqa: B008
        **flat: Any,
    ) -> None:
        super().__init__()
        given = {
            "splits": splits,
            "window": window,
            "tiles": tiles,
            "loader": loader,
            "storage": storage,
            "pseudo": pseudo,
        }
        grouped = group_flat_settings({**given, "demo": demo, **flat})
        unknown = sorted(set(grouped) - set(GROUPS))
        if unknown:
            raise ValueError(f"InkDataModule has no setting(s) {unknown}; see datamodules/settings.py")
        self.settings = DataSettings(**{name: as_group(name, grouped[name]) for name in GROUPS})
        for name, value, cls in (("augment", augment, AugmentConfig), ("labels", labels, LabelConfig)):
            if not isinstance(value, cls):
                raise ValueError(f"{name} must be an {cls.__name__}, got {type(value).__name__}")
        tile = self.settings.tiles
        self.stride, self.eval_stride = tile.train_stride, tile.eval_step
        self.augment = dataclasses.replace(augment)
        self.labels = labels
        self.data_dir = Path(data_dir)
        # Plain data, one block per group: configs, checkpoints and loggers read them; ids are strings.
        self.save_hyperparameters(
            {
                "data_dir": str(data_dir),
                **{name: dataclasses.asdict(getattr(self.settings, name)) for name in GROUPS},
                "augment": dataclasses.asdict(self.augment),
                "labels": dataclasses.asdict(self.labels),
            }
        )
        self._fragments: list[Fragment] = []
        self._pseudo: list[Fragment] = []  # pseudo-labelled segments: training only, after the labelled fragments
        self._splits: dict[str, TileSet] = {}
        self._predict: list[Fragment] = []
        self._windows: dict[Path, LayerWindow] = {}  # per fragment folder, so each depth profile is read once
        self._predict_selection: np.ndarray | None = None  # this rank's prediction tiles, when a writer plans them

    @property
    def num_slices(self) -> int:
        """Depth of the model's input: ``z_end - z_start``."""
        return self.settings.window.z_end - self.settings.window.z_start

    @property
    def _depth_margin(self) -> int:
        """Slices read beyond ``[z_start, z_end)`` on each side for the training depth shift."""
        return self.augment.depth_shift if self.augment.enabled else 0

    # ----------------------------------------------------------------------------------------- preparation

    def prepare_data(self) -> None:
        """Makes the demo fragments if asked; converts compressed or tiled slices of the folder the stage reads."""
        hp = self.settings
        predicting = self.trainer is not None and self.trainer.state.fn == "predict"
        folder = Path(hp.splits.predict_dir) if predicting and hp.splits.predict_dir else self.data_dir
        if hp.demo.enabled and folder == self.data_dir and not is_manifest(folder) and not has_fragments(self.data_dir):
            check_demo_folder(self.data_dir, hp.demo.fragments)
            make_demo_data(
                self.data_dir,
                num_fragments=hp.demo.fragments,
                height=hp.demo.size,
                width=hp.demo.size,
                ink_contrast=hp.demo.ink_contrast,
            )
        margin = self._depth_margin
        fragments = self._open(folder, require_labels=False)
        fitting = self.trainer is None or self.trainer.state.fn == "fit"
        if fitting and hp.pseudo.folder is not None:
            fragments += self._open_pseudo()
        for fragment in fragments:
            fragment.prepare_cache(fragment.z_start - margin, fragment.z_end + margin)

    def _open(
        self,
        folder: Path,
        *,
        require_labels: bool,
        names: Sequence[str] | None = None,
        check_reverse: bool = False,
        labels: LabelConfig | None = None,
    ) -> list[Fragment]:
        """Opens the fragments of ``folder`` (a folder or a manifest; all, or ``names``); ``check_reverse``: an absent
        ``reverse_depth`` name is a typo, not a fragment of another folder (a checkpoint's ``reverse_depth`` follows
        it to other data); ``labels``: how their label maps are read (default ``--data.labels``)."""
        hp = self.settings
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
        reversed_names = listed_reversed(hp.window.reverse_depth)
        unknown = reversed_names - {p.id for p in paths}
        if unknown and check_reverse:
            raise ValueError(f"reverse_depth names unknown fragment(s) {sorted(unknown)} in '{folder}'")
        fragments = [
            open_fragment(
                p,
                z_start=hp.window.z_start,
                z_end=hp.window.z_end,
                z_window=hp.window.z_window,
                reverse_depth=AUTO if hp.window.reverse_depth == AUTO else p.id in reversed_names,
                cache_dir=hp.storage.cache_dir,
                chunk_cache_mb=hp.storage.chunk_cache_mb,
                require_labels=require_labels,
                memo=self._windows,
                labels=labels or self.labels,
            )
            for p in paths
        ]
        for fragment in fragments:
            if fragment.height < hp.tiles.tile_size or fragment.width < hp.tiles.tile_size:
                raise ValueError(
                    f"fragment '{fragment.id}' is {fragment.height}x{fragment.width}, smaller than one tile "
                    f"(tile_size={hp.tiles.tile_size})"
                )
            if hp.storage.normalization == "fragment":
                margin = self._depth_margin
                fragment.intensity = intensity_range(
                    fragment, fragment.z_start - margin, fragment.z_end + margin, *hp.storage.intensity_percentiles
                )
        return fragments

    def setup(self, stage: str) -> None:
        """Opens the fragments and lays out the tiles of the splits ``stage`` needs."""
        hp = self.settings
        if stage == "predict":
            folder = Path(hp.splits.predict_dir) if hp.splits.predict_dir else self.data_dir
            fragments = self._open(folder, require_labels=False, names=hp.splits.predict_fragments)
            whole = [Region(i, 0, ((0, f.height),)) for i, f in enumerate(fragments)]
            self._predict = fragments
            self._predict_selection = None
            self._set_split("predict", fragments, whole, training=False)
            return
        if not self._fragments:
            self._fragments = self._open(self.data_dir, require_labels=False, check_reverse=stage == "fit")
        gap = hp.splits.split_gap if hp.splits.split_gap is not None else hp.tiles.tile_size
        plans = plan_regions(
            [f.id for f in self._fragments],
            [(f.height, f.width) for f in self._fragments],
            train_fragments=hp.splits.train_fragments,
            val_fragments=hp.splits.val_fragments,
            test_fragments=hp.splits.test_fragments,
            folds=hp.splits.folds,
            val_fold=hp.splits.val_fold,
            test_fold=hp.splits.test_fold,
            gap=gap,
            tile_size=hp.tiles.tile_size,
            has_validation=[f.validation is not None for f in self._fragments],
        )
        self._pseudo = self._open_pseudo() if stage == "fit" and hp.pseudo.folder is not None else []
        if self._pseudo:
            self._check_pseudo_ids(plans)
            first = len(self._fragments)
            plans["train"] += [Region(first + j, 0, ((0, f.height),)) for j, f in enumerate(self._pseudo)]
        for split, training in (("train", True), ("val", False), ("test", False)):
            self._set_split(split, self.fragments(split), plans[split], training=training)
        if self._pseudo:
            pseudo_tiles = int((self._splits["train"].windows[:, 0] >= len(self._fragments)).sum())
            rank_zero_info(
                f"pseudo-labels: {len(self._pseudo)} segment(s) from '{hp.pseudo.folder}', {pseudo_tiles} of "
                f"{len(self._splits['train'])} training tiles, loss weight {hp.pseudo.weight}, share "
                f"{'in proportion' if hp.pseudo.share is None else hp.pseudo.share}, soft {hp.pseudo.soft}"
            )

    def _open_pseudo(self) -> list[Fragment]:
        """The segments of the ``--data.pseudo.folder`` label set, their labels read as the label set wrote them."""
        hp = self.settings.pseudo
        manifest = label_set_manifest(hp.folder)
        rules = dataclasses.replace(PSEUDO_LABEL_RULES, soft=hp.soft)
        return self._open(manifest, require_labels=True, names=hp.fragments, labels=rules)

    def _check_pseudo_ids(self, plans: dict[str, list[Region]]) -> None:
        """A segment is labelled or pseudo-labelled, never both; above all never validated on its pseudo-labels."""
        pseudo = {f.id for f in self._pseudo}
        for split, regions in plans.items():
            clash = sorted(pseudo & {self._fragments[r.fragment].id for r in regions})
            if clash:
                raise ValueError(
                    f"data.pseudo.folder '{self.settings.pseudo.folder}' holds pseudo-labels of {clash}, which the "
                    f"{split} split uses with real labels: leave them out with data.pseudo.fragments, or out of "
                    "the splits"
                )

    def _set_split(self, split: str, fragments: list[Fragment], regions: list[Region], *, training: bool) -> None:
        hp = self.settings
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
                tile_size=hp.tiles.tile_size,
                stride=self.stride if training else self.eval_stride,
                min_valid_fraction=hp.tiles.min_valid_fraction if training else 0.0,
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
            raise ValueError(_empty_split_message(split, self.settings))
        return tiles

    def fragments(self, split: str) -> list[Fragment]:
        """The fragments a split's fragment indices refer to (the labelled ones, then any pseudo-labelled)."""
        return self._predict if split == "predict" else self._fragments + self._pseudo

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
        fragments, windows, size = self.fragments(split), self.tiles(split).windows, self.settings.tiles.tile_size
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
        return PredictionLayout(
            [f.id for f in fragments], shapes, tiles.windows, self.settings.tiles.tile_size, sources
        )

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
        hp = self.settings
        augment = self.augment if training and self.augment.enabled else None
        labelled, pseudo = len(self._fragments), len(self._pseudo) if split == "train" else 0
        soft = [self.labels.soft] * labelled + [hp.pseudo.soft] * pseudo if training else False
        weights = [1.0] * labelled + [hp.pseudo.weight] * pseudo if training and pseudo else None
        return TileDataset(
            self.fragments(split),
            self.tiles(split),
            hp.tiles.tile_size,
            TileTransform(augment, self.num_slices, train=training),
            depth_margin=augment.depth_shift if augment is not None else 0,
            jitter=self.stride // 2 if training and hp.tiles.jitter else 0,
            with_labels=split != "predict",
            soft_labels=soft,
            loss_weights=weights,
        )

    def _loader(self, dataset: TileDataset, sampler: object, batch_size: int) -> DataLoader:
        hp, trainer = self.settings, self.trainer
        cuda = trainer is not None and trainer.accelerator.__class__.__name__ == "CUDAAccelerator"
        per_machine = trainer.num_devices if trainer is not None else 1
        return make_loader(
            dataset,
            sampler,
            batch_size,
            num_workers=hp.loader.num_workers if hp.loader.num_workers is not None else default_workers(per_machine),
            pin_memory=cuda if hp.loader.pin_memory is None else hp.loader.pin_memory,
            persistent_workers=hp.loader.persistent_workers,
            prefetch_factor=hp.loader.prefetch_factor,
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
        hp = self.settings
        dataset = self._dataset("train", training=True)
        world, rank = self._rank()
        pseudo = dataset.tiles.windows[:, 0] >= len(self._fragments) if self._pseudo else None
        sampler = BalancedTileSampler(
            dataset,
            hp.tiles.samples_per_epoch,
            hp.tiles.ink_ratio,
            num_replicas=world,
            rank=rank,
            seed=hp.tiles.seed,
            pseudo=pseudo,
            pseudo_share=hp.pseudo.share,
        )
        return self._loader(dataset, sampler, hp.loader.batch_size)

    def _eval_loader(self, split: str) -> DataLoader:
        dataset = self._dataset(split, training=False)
        world, rank = self._rank()
        chosen = self._predict_selection if split == "predict" else None
        sampler = ShardedEvalSampler(dataset, num_replicas=world, rank=rank, indices=chosen)
        return self._loader(dataset, sampler, self.settings.loader.eval_batch_size or self.settings.loader.batch_size)

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader("test")

    def predict_dataloader(self) -> DataLoader:
        return self._eval_loader("predict")


def _empty_split_message(split: str, hp: DataSettings) -> str:
    name = {"train": "training", "val": "validation", "test": "test", "predict": "prediction"}[split]
    hints = {
        "train": "set train_fragments, or lower min_valid_fraction / tile_size, or check the masks",
        "val": "set val_fragments or val_fold (val_fold=None disables region validation)",
        "test": "set test_fragments or test_fold",
        "predict": "set predict_dir / predict_fragments",
    }[split]
    return (
        f"the {name} split is empty (tile_size={hp.tiles.tile_size}, folds={hp.splits.folds}, "
        f"val_fold={hp.splits.val_fold}, test_fold={hp.splits.test_fold}, "
        f"min_valid_fraction={hp.tiles.min_valid_fraction}): {hints}"
    )
