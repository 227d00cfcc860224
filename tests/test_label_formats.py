"""Labels as they are published: every storage round-trips generator -> discovery -> training batch; big maps stream."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image

from datamodules.augment.transforms import AugmentConfig
from datamodules.ink_datamodule import InkDataModule
from datamodules.reading.fragment import Fragment
from datamodules.reading.fragment_maps import label_cache
from datamodules.reading.label_rules import LabelConfig
from datamodules.reading.map_reader import MapReader
from datamodules.synthetic import make_fragment
from datamodules.synthetic.generator import SyntheticVolume
from datamodules.synthetic.maps import anti_aliased, grey_levels
from utils.png import StreamingPngWriter

SEGMENT = "20231106155351"
UNAUGMENTED = {"samples_per_epoch": 1, "jitter": False, "augment": AugmentConfig(enabled=False)}
SIZE = 64
CASES = [
    ("binary", ".png"),
    ("grey", ".png"),
    ("palette", ".png"),
    ("rgba", ".png"),
    ("grey-alpha", ".png"),
    ("16-bit", ".png"),
    ("grey", ".tif"),
    ("grey", ".tiff"),
    ("palette", ".tif"),
    ("rgba", ".tiff"),
    ("16-bit", ".tif"),
    ("grey", ".zarr"),
]


def _expected_levels(style: str, seed: int = 0) -> np.ndarray:
    labels = SyntheticVolume(SIZE, SIZE, depth=8, seed=seed).labels
    return grey_levels(labels, style)


@pytest.mark.parametrize(("style", "suffix"), CASES)
def test_each_label_storage_round_trips_to_a_training_batch(tmp_path: Path, style: str, suffix: str) -> None:
    folder = make_fragment(
        tmp_path / "data" / SEGMENT, SIZE, SIZE, depth=8, map_layout="segment", label_style=style, label_suffix=suffix
    )
    levels = _expected_levels(style)
    fragment = Fragment(folder, z_start=0, z_end=8)
    assert fragment.sources.maps["inklabels"].name == f"{SEGMENT}_inklabels{suffix}"
    np.testing.assert_array_equal(fragment.labels, levels >= 128)
    grey = style not in ("binary", "palette")
    assert fragment.label_summary["kind"] == ("grey" if grey else "binary")
    if grey:
        np.testing.assert_array_equal(fragment.label_levels, levels)
    settings = {"tile_size": SIZE, "z_start": 0, "z_end": 8, "batch_size": 1, "num_workers": 0, "val_fold": None}
    datamodule = InkDataModule(data_dir=str(tmp_path / "data"), **settings, **UNAUGMENTED)
    datamodule.setup("fit")
    batch = next(iter(datamodule.train_dataloader()))
    assert set(torch.unique(batch["label"]).tolist()) <= {0.0, 1.0}
    assert batch["label"].sum() == int((levels >= 128).sum())


def test_soft_labels_train_on_the_grey_levels_and_score_on_the_threshold(tmp_path: Path) -> None:
    folder = make_fragment(tmp_path / "data" / SEGMENT, SIZE, SIZE, depth=8, map_layout="segment", label_style="grey")
    levels = _expected_levels("grey")
    settings = {"tile_size": SIZE, "z_start": 0, "z_end": 8, "batch_size": 1, "num_workers": 0, "val_fold": None}
    soft = InkDataModule(data_dir=str(folder.parent), **settings, **UNAUGMENTED, labels=LabelConfig(soft=True))
    soft.setup("fit")
    label = next(iter(soft.train_dataloader()))["label"][0, 0].numpy()
    np.testing.assert_allclose(label, levels / 255.0, atol=1e-6)
    assert ((label > 0) & (label < 1)).any()
    strict = Fragment(folder, z_start=0, z_end=8, labels=LabelConfig(threshold=0.9))
    assert strict.labels.sum() == int((levels >= 230).sum()) < int((levels >= 128).sum())


def test_anti_aliased_labels_keep_their_strokes_at_half_way() -> None:
    labels = SyntheticVolume(SIZE, SIZE, depth=8, seed=1).labels
    grey = anti_aliased(labels)
    assert len(np.unique(grey)) > 3 and ((grey > 0) & (grey < 255)).mean() > 0.01
    assert np.mean((grey >= 128) == labels) > 0.95


def test_bad_label_files_are_named(tmp_path: Path) -> None:
    folder = make_fragment(tmp_path / SEGMENT, SIZE, SIZE, depth=8, map_layout="segment")
    target = folder / f"{SEGMENT}_inklabels.png"
    target.write_bytes(b"not a png")
    with pytest.raises(ValueError, match=rf"ink labels '.*{SEGMENT}_inklabels\.png' cannot be read as an image"):
        Fragment(folder, z_start=0, z_end=8)
    target.unlink()
    tifffile.imwrite(folder / f"{SEGMENT}_inklabels.tif", np.zeros((2, SIZE, SIZE), np.uint8))
    with pytest.raises(ValueError, match=r"_inklabels\.tif' holds an image of shape \(2, 64, 64\); expected a 2-D map"):
        Fragment(folder, z_start=0, z_end=8)
    (folder / f"{SEGMENT}_inklabels.tif").unlink()
    Image.fromarray(np.zeros((SIZE, SIZE + 1), np.uint8)).save(target)
    with pytest.raises(ValueError, match=rf"_inklabels\.png' is {SIZE + 1}x{SIZE} \(W x H\) but the volume"):
        Fragment(folder, z_start=0, z_end=8)


def _tiled_tiff(path: Path, height: int, width: int, tile: int = 512) -> None:
    """A zlib-tiled grey label map written tile by tile (never whole in memory): a disc of anti-aliased ink."""

    def tiles():
        for y in range(0, height, tile):
            for x in range(0, width, tile):
                yy, xx = np.mgrid[y : y + tile, x : x + tile]
                yield np.where((yy - height // 2) ** 2 + (xx - width // 2) ** 2 < (height // 3) ** 2, 200, 0).astype(
                    np.uint8
                )

    tifffile.imwrite(path, tiles(), shape=(height, width), dtype=np.uint8, tile=(tile, tile), compression="zlib")


def test_maps_beyond_pillows_limit_convert_in_bounded_memory(tmp_path: Path) -> None:
    """9728 x 9728 = 94.6 Mpx, above Pillow's 89.5 Mpx guard: a tiled TIFF converts holding a few bands only."""
    height = width = 9728
    assert height * width > Image.MAX_IMAGE_PIXELS
    source = tmp_path / "big_inklabels.tif"
    _tiled_tiff(source, height, width)
    tracemalloc.start()
    try:
        files = label_cache(source, tmp_path / "cache", (height, width), LabelConfig())
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # The map alone is 90 MiB as uint8 (180 MiB as levels + ink); conversion held 43 MiB at most when measured.
    assert peak < 64 * 2**20, f"peak {peak / 2**20:.0f} MiB for a {height * width / 1e6:.0f} Mpx map"
    ink = np.load(files.ink, mmap_mode="r")
    assert ink[height // 2, width // 2] and not ink[0, 0] and files.levels is not None  # 0 and 200: grey
    png = tmp_path / "big_mask.png"
    with open(png, "wb") as handle:  # a PNG of that size is read too (Pillow's guard lifted for maps)
        writer = StreamingPngWriter(handle, height, width)
        for start in range(0, height, 1024):
            writer.write_rows(np.full((min(1024, height - start), width), 255, np.uint8))
        writer.close()
    with MapReader(png, (height, width), "mask") as reader:
        assert reader.rows(height - 2, height).min() == 255
