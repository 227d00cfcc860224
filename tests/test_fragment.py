"""The fragment reader: every on-disk variant reads back the source pixels; every bad input names its file."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import tifffile

from datamodules.reading.fragment import Fragment, discover_fragments, list_slices
from tests.conftest import random_fragment_arrays, write_fragment

SHAPE = (12, 40, 48)


@pytest.mark.parametrize(
    "variant",
    [
        {},
        {"dirname": "layers"},
        {"digits": 3},
        {"dtype": np.uint8},
        {"compression": "lzw"},
        {"compression": "zlib"},
        {"tile": (16, 16)},
        {"tile": (16, 16), "compression": "zlib"},
    ],
    ids=["plain", "layers", "3-digit", "uint8", "lzw", "zlib", "tiled", "tiled-zlib"],
)
def test_every_variant_reads_the_source_pixels(fragment_factory, variant):
    folder, volume, mask, labels = fragment_factory(**variant)
    fragment = Fragment(folder, z_start=2, z_end=10)
    assert fragment.shape == SHAPE and fragment.dtype == volume.dtype
    window = fragment.read(1, 11, 5, 7, 20, 30)
    np.testing.assert_array_equal(window, volume[1:11, 5:25, 7:37].transpose(1, 2, 0))
    np.testing.assert_array_equal(fragment.mask, mask)
    np.testing.assert_array_equal(fragment.labels, labels)


def test_uncompressed_slices_are_memory_mapped_and_compressed_ones_cached(fragment_factory):
    plain, *_ = fragment_factory("plain")
    fragment = Fragment(plain, z_start=0, z_end=4)
    fragment.read(0, 2, 0, 0, 8, 8)
    assert all(isinstance(m, np.memmap) for m in fragment._maps.values())
    assert not list((plain / ".ink_cache").glob("[0-9]*.npy"))  # no copy of a mappable slice

    packed, volume, *_ = fragment_factory("packed", compression="zlib")
    fragment = Fragment(packed, z_start=0, z_end=4)
    assert fragment.prepare_cache(0, 4) == 4
    assert fragment.prepare_cache(0, 4) == 0  # reused, not rebuilt
    cached = sorted((packed / ".ink_cache").glob("[0-9]*.npy"))
    assert len(cached) == 4 and not list((packed / ".ink_cache").glob("*.tmp"))
    assert all(isinstance(np.load(p, mmap_mode="r"), np.memmap) for p in cached)

    # A changed source is converted again; the stale copy goes.
    new = volume[1] // 2
    tifffile.imwrite(packed / "surface_volume" / "01.tif", new, compression="zlib")
    os.utime(packed / "surface_volume" / "01.tif", ns=(1, 1))
    fresh = Fragment(packed, z_start=0, z_end=4)
    np.testing.assert_array_equal(fresh.read(1, 2, 0, 0, 40, 48)[..., 0], new)
    assert len(list((packed / ".ink_cache").glob("01.*.npy"))) == 1


def test_cache_dir_setting_is_used(fragment_factory, tmp_path):
    folder, volume, *_ = fragment_factory(compression="lzw")
    fragment = Fragment(folder, z_start=0, z_end=2, cache_dir=tmp_path / "cache")
    np.testing.assert_array_equal(fragment.read(0, 1, 0, 0, 4, 4)[..., 0], volume[0, :4, :4])
    assert list((tmp_path / "cache" / folder.name).glob("00.*.npy"))


def test_reverse_depth(fragment_factory):
    folder, volume, *_ = fragment_factory()
    fragment = Fragment(folder, z_start=0, z_end=12, reverse_depth=True)
    np.testing.assert_array_equal(fragment.read(0, 12, 0, 0, 40, 48), volume[::-1].transpose(1, 2, 0))


def test_pickles_without_maps_and_reopens(fragment_factory):
    folder, volume, *_ = fragment_factory()
    fragment = Fragment(folder, z_start=0, z_end=4)
    fragment.read(0, 4, 0, 0, 8, 8)
    assert fragment._maps
    assert isinstance(fragment.mask, np.memmap) and isinstance(fragment.labels, np.memmap)
    payload = pickle.dumps(fragment)
    assert len(payload) < 40 * 48  # no pixel data travels, not even the 2-D maps
    clone = pickle.loads(payload)
    assert clone._maps == {}
    np.testing.assert_array_equal(clone.read(0, 4, 3, 3, 5, 5), volume[0:4, 3:8, 3:8].transpose(1, 2, 0))


def test_missing_mask_means_all_valid_and_missing_labels_allowed_unless_required(tmp_path):
    folder = write_fragment(tmp_path / "f", np.zeros((3, 10, 12), np.uint16))
    fragment = Fragment(folder, z_start=0, z_end=3)
    assert fragment.mask.all() and fragment.labels is None
    with pytest.raises(FileNotFoundError, match="inklabels.png"):
        Fragment(folder, z_start=0, z_end=3, require_labels=True)


def test_slices_sort_numerically(tmp_path):
    folder = tmp_path / "v"
    folder.mkdir()
    for i in (0, 2, 10, 1):
        tifffile.imwrite(folder / f"{i}.tif", np.zeros((2, 2), np.uint16))
    (folder / "notes.txt").write_text("ignored")
    with pytest.raises(ValueError, match=r"gap in slice numbering.*\[3, 4, 5"):
        list_slices(folder)
    for i in range(3, 10):
        tifffile.imwrite(folder / f"{i}.tif", np.zeros((2, 2), np.uint16))
    assert [p.name for p in list_slices(folder)][:3] == ["0.tif", "1.tif", "2.tif"]
    assert list_slices(folder)[-1].name == "10.tif"


# ------------------------------------------------------------------------------------------ bad input


def test_data_dir_missing_or_empty(tmp_path):
    with pytest.raises(FileNotFoundError, match="data_dir .*nowhere.* does not exist"):
        discover_fragments(tmp_path / "nowhere")
    (tmp_path / "empty" / "junk").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="no fragment found in data_dir"):
        discover_fragments(tmp_path / "empty")


def test_gap_in_slices_names_the_folder(fragment_factory):
    folder, *_ = fragment_factory()
    (folder / "surface_volume" / "05.tif").unlink()
    with pytest.raises(ValueError, match=r"gap in slice numbering in .*surface_volume.*\[5\]"):
        Fragment(folder, z_start=0, z_end=4)


def test_slice_of_another_shape_or_dtype(fragment_factory):
    folder, *_ = fragment_factory()
    tifffile.imwrite(folder / "surface_volume" / "03.tif", np.zeros((40, 47), np.uint16))
    with pytest.raises(ValueError, match=r"03\.tif.*\(40, 47\).*must match"):
        Fragment(folder, z_start=0, z_end=4)
    tifffile.imwrite(folder / "surface_volume" / "03.tif", np.zeros((40, 48), np.uint8))
    with pytest.raises(ValueError, match=r"03\.tif.*uint8.*must match"):
        Fragment(folder, z_start=0, z_end=4)


@pytest.mark.parametrize("compression", [None, "zlib"])
def test_truncated_slice(fragment_factory, compression):
    folder, *_ = fragment_factory(compression=compression)
    path = folder / "surface_volume" / "07.tif"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2] if compression is None else data[:200])
    with pytest.raises(ValueError, match=r"unreadable or truncated TIFF slice .*07\.tif"):
        Fragment(folder, z_start=0, z_end=4)


def test_not_a_tiff(fragment_factory):
    folder, *_ = fragment_factory()
    (folder / "surface_volume" / "02.tif").write_bytes(b"not a tiff at all")
    with pytest.raises(ValueError, match=r"02\.tif"):
        Fragment(folder, z_start=0, z_end=4)


def test_z_range_errors(fragment_factory):
    folder, *_ = fragment_factory()
    with pytest.raises(ValueError, match=r"z_end=13 is beyond the last slice of fragment 'frag' \(12 slices"):
        Fragment(folder, z_start=0, z_end=13)
    with pytest.raises(ValueError, match=r"z_start=5, z_end=5"):
        Fragment(folder, z_start=5, z_end=5)


def test_read_outside_the_fragment(fragment_factory):
    folder, *_ = fragment_factory()
    fragment = Fragment(folder, z_start=0, z_end=4)
    with pytest.raises(ValueError, match="outside fragment 'frag'"):
        fragment.read(0, 2, 30, 0, 20, 20)


def test_folder_without_volume(tmp_path: Path):
    (tmp_path / "x").mkdir()
    with pytest.raises(FileNotFoundError, match="has no surface_volume or layers folder"):
        Fragment(tmp_path / "x")


def test_read_in_either_layout(tmp_path):
    volume, mask, labels = random_fragment_arrays((6, 20, 24), 3)
    write_fragment(tmp_path / "f", volume, mask=mask, labels=labels)
    fragment = Fragment(tmp_path / "f", z_start=0, z_end=6)
    chw = fragment.read(1, 5, 2, 3, 10, 12, channels_last=False)
    assert chw.flags.c_contiguous and np.array_equal(chw, volume[1:5, 2:12, 3:15])
    hwc = fragment.read(1, 5, 2, 3, 10, 12)
    assert hwc.flags.c_contiguous and np.array_equal(hwc, chw.transpose(1, 2, 0))
