"""Zarr volumes: every zarr variant reads what the TIFF stack of the same fragment reads; the chunk cache stays in
its limit; URL volumes, zarr masks and labels; every bad input names its file."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("zarr", reason="zarr 3 needs Python >= 3.11")
from PIL import Image

from datamodules.augment.transforms import AugmentConfig
from datamodules.ink_datamodule import InkDataModule
from datamodules.reading.chunk_cache import ChunkCache, process_cache
from datamodules.reading.fragment import Fragment, discover_fragments
from datamodules.reading.intensity import intensity_range
from datamodules.reading.label_rules import LabelConfig
from datamodules.synthetic import make_fragment
from datamodules.synthetic.zarr_writer import write_zarr_map, write_zarr_volume
from tests.conftest import random_fragment_arrays, write_fragment

SHAPE = (13, 70, 58)  # not a multiple of the chunks below, so edge chunks are partial
CHUNKS = (4, 16, 16)
ZARR_KINDS = {"zarr2": (2, False), "zarr3": (3, False), "ome-zarr2": (2, True), "ome-zarr3": (3, True)}


def _zarr_fragment(
    folder: Path, volume: np.ndarray, mask: np.ndarray, labels: np.ndarray, kind: str, *, maps: str = "zarr"
) -> Path:
    """Writes ``volume`` as ``surface_volume.zarr`` of ``kind``, with the maps as zarr or PNG."""
    zarr_format, ome = ZARR_KINDS[kind]
    folder.mkdir(parents=True)
    write_zarr_volume(
        folder / "surface_volume.zarr",
        iter(volume),
        volume.shape,
        volume.dtype,
        chunks=CHUNKS,
        zarr_format=zarr_format,
        ome=ome,
    )
    if maps == "zarr":
        write_zarr_map(folder / "mask.zarr", mask.astype(np.uint8) * 255, chunks=(32, 32), zarr_format=zarr_format)
        write_zarr_map(folder / "inklabels.zarr", labels, chunks=(32, 32), zarr_format=zarr_format, ome=ome)
    else:
        Image.fromarray(mask.astype(np.uint8) * 255).save(folder / "mask.png")
        Image.fromarray(labels.astype(np.uint8) * 255).save(folder / "inklabels.png")
    return folder


@pytest.fixture
def source(tmp_path: Path) -> tuple[Path, np.ndarray, np.ndarray, np.ndarray]:
    volume, mask, labels = random_fragment_arrays(SHAPE, seed=5)
    return write_fragment(tmp_path / "tiff" / "frag", volume, mask=mask, labels=labels), volume, mask, labels


@pytest.mark.parametrize("kind", list(ZARR_KINDS))
@pytest.mark.parametrize("reverse", [False, True], ids=["stored", "reversed"])
def test_zarr_reads_what_the_tiff_stack_reads(tmp_path, source, kind, reverse):
    tiff_dir, volume, mask, labels = source
    folder = _zarr_fragment(tmp_path / kind / "frag", volume, mask, labels, kind, maps="zarr" if reverse else "png")
    tiff = Fragment(tiff_dir, z_start=0, z_end=13, reverse_depth=reverse)
    zarr = Fragment(folder, z_start=0, z_end=13, reverse_depth=reverse)
    assert zarr.backend == "zarr" and zarr.shape == SHAPE and zarr.dtype == np.uint16
    expected = volume[::-1] if reverse else volume
    rng = np.random.default_rng(0)
    for _ in range(12):
        z0 = int(rng.integers(0, 12))
        z1 = int(rng.integers(z0 + 1, 14))
        y, x = int(rng.integers(0, 60)), int(rng.integers(0, 50))
        sy, sx = int(rng.integers(1, 71 - y)), int(rng.integers(1, 59 - x))
        window = zarr.read(z0, z1, y, x, sy, sx, channels_last=False)
        np.testing.assert_array_equal(window, expected[z0:z1, y : y + sy, x : x + sx])
        np.testing.assert_array_equal(zarr.read(z0, z1, y, x, sy, sx), tiff.read(z0, z1, y, x, sy, sx))
    for z in (0, 6, 12):
        np.testing.assert_array_equal(np.asarray(zarr.plane(z)[::8, ::8]), tiff.plane(z)[::8, ::8])
        np.testing.assert_array_equal(np.asarray(zarr.plane(z)), expected[z])
    np.testing.assert_array_equal(zarr.mask, mask)
    np.testing.assert_array_equal(zarr.labels, labels)
    assert zarr.ignore is None
    assert intensity_range(zarr, 2, 11) == intensity_range(tiff, 2, 11)


def test_plane_view_indexes_like_an_array(tmp_path, source):
    _, volume, mask, labels = source
    fragment = Fragment(_zarr_fragment(tmp_path / "z" / "f", volume, mask, labels, "zarr3"), z_start=0, z_end=13)
    plane, expected = fragment.plane(7), volume[7]
    assert plane.shape == expected.shape and plane.ndim == 2
    for key in [(slice(None, None, 3), slice(5, 40, 2)), (slice(None, None, -2), 9), 4, (-1, slice(None)), (...,)]:
        np.testing.assert_array_equal(plane[key], expected[key])
    assert np.asarray(plane, dtype=np.float32).dtype == np.float32


def test_datamodule_batches_are_identical_across_backends(tmp_path):
    settings = dict(
        z_start=1, z_end=9, tile_size=16, stride=8, eval_stride=8, batch_size=4, num_workers=0,
        samples_per_epoch=16, augment=AugmentConfig(enabled=False), folds=4, chunk_cache_mb=1,
    )  # fmt: skip
    for name, (shape, seed) in {"a": ((10, 96, 48), 0), "b": ((10, 64, 56), 1)}.items():
        volume, mask, labels = random_fragment_arrays(shape, seed)
        write_fragment(tmp_path / "tiff" / name, volume, mask=mask, labels=labels)
        _zarr_fragment(tmp_path / "zarr" / name, volume, mask, labels, "zarr3" if name == "a" else "ome-zarr2")
    batches = {}
    for backend in ("tiff", "zarr"):
        dm = InkDataModule(data_dir=str(tmp_path / backend), **settings)
        dm.setup("fit")
        torch.manual_seed(0)  # the training sampler draws from torch's generator
        batches[backend] = [*dm.train_dataloader(), *dm.val_dataloader()]
    assert len(batches["tiff"]) == len(batches["zarr"]) > 4
    for ours, theirs in zip(batches["tiff"], batches["zarr"]):
        assert ours["fragment"] == theirs["fragment"]
        for key in ("image", "label", "valid", "yx"):
            torch.testing.assert_close(ours[key], theirs[key], rtol=0, atol=0)


def test_zarr_fragment_pickles_without_stores_and_reads_in_a_worker(tmp_path, source):
    _, volume, mask, labels = source
    fragment = Fragment(_zarr_fragment(tmp_path / "z" / "f", volume, mask, labels, "zarr3"), z_start=0, z_end=13)
    fragment.read(0, 13, 0, 0, 70, 58)
    payload = pickle.dumps(fragment)
    assert len(payload) < 2000 and b"zarr.core" not in payload  # no store, no chunk travels
    clone = pickle.loads(payload)
    assert clone._volume._array is None
    np.testing.assert_array_equal(clone.read(2, 9, 3, 4, 30, 20, channels_last=False), volume[2:9, 3:33, 4:24])
    loader = torch.utils.data.DataLoader(_Windows(fragment), batch_size=2, num_workers=1)
    (batch,) = list(loader)
    np.testing.assert_array_equal(batch.numpy(), np.stack([volume[0:4, 0:8, 0:8], volume[0:4, 8:16, 8:16]]))


class _Windows(torch.utils.data.Dataset):
    def __init__(self, fragment: Fragment) -> None:
        self.fragment = fragment

    def __len__(self) -> int:
        return 2

    def __getitem__(self, i: int) -> np.ndarray:
        return self.fragment.read(0, 4, 8 * i, 8 * i, 8, 8, channels_last=False).astype(np.int32)


# ------------------------------------------------------------------------------------------ chunk cache


def test_chunk_cache_keeps_its_byte_limit_and_evicts_the_least_recently_used():
    cache = ChunkCache(1000)
    arrays = {k: np.full(300, i, np.uint8) for i, k in enumerate("abcd")}
    for key in "abc":
        cache.put(key, arrays[key])
    assert cache.nbytes == 900 and len(cache) == 3
    assert cache.get("a") is arrays["a"]  # "a" is now the most recently used, "b" the least
    cache.put("d", arrays["d"])
    assert "b" not in cache and all(k in cache for k in "acd") and cache.nbytes == 900
    cache.put("huge", np.zeros(1001, np.uint8))  # larger than the whole limit: not kept, nothing evicted for it
    assert "huge" not in cache and cache.nbytes == 900
    cache.resize(500)
    assert list(cache._items) == ["d"] and cache.nbytes == 300
    with pytest.raises(ValueError, match="read-only"):
        cache.get("d")[0] = 1


def test_reading_a_volume_larger_than_the_cache_stays_within_the_limit(tmp_path):
    volume = np.random.default_rng(1).integers(0, 65535, (16, 256, 256), dtype=np.uint16)  # 2 MiB
    folder = tmp_path / "f"
    folder.mkdir()
    write_zarr_volume(folder / "surface_volume.zarr", iter(volume), volume.shape, volume.dtype, chunks=(4, 32, 32))
    fragment = Fragment(folder, z_start=0, z_end=16, chunk_cache_mb=1)
    cache = process_cache(1 << 20)
    cache.clear()
    peak = 0
    for y in range(0, 224, 16):
        for x in range(0, 224, 16):
            np.testing.assert_array_equal(
                fragment.read(0, 16, y, x, 32, 32), volume[:, y : y + 32, x : x + 32].transpose(1, 2, 0)
            )
            peak = max(peak, cache.nbytes)
    assert 0 < peak <= 1 << 20 and cache.hits > 0
    # Each chunk owns its bytes: a view would keep its whole read block alive behind the cache's count.
    assert all(chunk.base is None for chunk in cache._items.values())


# ------------------------------------------------------------------------------------------ URL volumes


def test_url_file_names_a_volume_read_through_fsspec(tmp_path, source):
    _, volume, mask, labels = source
    stored = _zarr_fragment(tmp_path / "store" / "x", volume, mask, labels, "ome-zarr3")
    folder = tmp_path / "data" / "remote"
    folder.mkdir(parents=True)
    (folder / "surface_volume.url").write_text((stored / "surface_volume.zarr").as_uri() + "\n")
    Image.fromarray(mask.astype(np.uint8) * 255).save(folder / "mask.png")
    assert discover_fragments(tmp_path / "data") == [folder]
    fragment = pickle.loads(pickle.dumps(Fragment(folder, z_start=0, z_end=13, reverse_depth=True)))
    np.testing.assert_array_equal(
        fragment.read(1, 12, 5, 6, 40, 30, channels_last=False), volume[::-1][1:12, 5:45, 6:36]
    )
    assert fragment.source_key(0, 13).startswith("zarr:")


# ------------------------------------------------------------------------------------------ maps


def test_zarr_labels_follow_the_png_rules(tmp_path, source):
    _, volume, mask, _ = source
    labels = np.zeros(SHAPE[1:], np.uint8)
    labels[5:20, 5:20] = 1
    labels[30:40, 30:40] = 127  # unknown: neither ink nor background, left unscored
    folder = _zarr_fragment(tmp_path / "z" / "f", volume, mask, labels > 0, "zarr2")
    write_zarr_map(folder / "inklabels.zarr", labels, chunks=(16, 64))  # replaces it, bands of 16 rows
    write_zarr_map(folder / "mask.zarr", mask)  # a bool mask is binary too
    rules = LabelConfig(unknown=127)
    fragment = Fragment(folder, z_start=0, z_end=4, labels=rules)
    assert fragment.labels.sum() == 15 * 15 and not fragment.labels[35, 35]
    assert fragment.ignore is not None and fragment.ignore.sum() == 100 and fragment.ignore[35, 35]
    np.testing.assert_array_equal(fragment.mask, mask)
    cached = sorted(p.name for p in (folder / ".ink_cache").glob("*.npy"))  # mask, ink, unknown, excluded
    again = Fragment(folder, z_start=0, z_end=4, labels=rules)
    assert again._caches == fragment._caches  # reused, not rebuilt
    labels[0, 0] = 255
    write_zarr_map(folder / "inklabels.zarr", np.where(labels == 1, 255, labels).astype(np.uint8))
    changed = Fragment(folder, z_start=0, z_end=4, labels=rules)
    assert changed._caches["ink"] != fragment._caches["ink"] and changed.labels[0, 0]  # a new version
    assert len(list((folder / ".ink_cache").glob("inklabels.*.npy"))) == 2 and len(cached) == 4


# ------------------------------------------------------------------------------------------ synthetic writer


def test_make_fragment_writes_the_same_volume_as_zarr(tmp_path):
    common = dict(depth=9, seed=3, with_labels=True)
    tiff = Fragment(make_fragment(tmp_path / "tiff", 40, 36, **common), z_start=0, z_end=9)
    zarr = Fragment(
        make_fragment(tmp_path / "zarr", 40, 36, volume_format="ome-zarr", zarr_format=2, chunks=(4, 16, 16), **common),
        z_start=0,
        z_end=9,
    )
    np.testing.assert_array_equal(zarr.read(0, 9, 0, 0, 40, 36), tiff.read(0, 9, 0, 0, 40, 36))
    np.testing.assert_array_equal(zarr.labels, tiff.labels)
    assert not [p for p in (tmp_path / "zarr").iterdir() if p.name.startswith(".") and p.name != ".ink_cache"]
    with pytest.raises(ValueError, match="already holds the volume surface_volume.zarr"):
        make_fragment(tmp_path / "zarr", 40, 36, **common)


def test_an_interrupted_zarr_write_leaves_nothing_behind(tmp_path):
    def planes():
        yield np.zeros((8, 8), np.uint8)
        raise RuntimeError("generator failed")

    with pytest.raises(RuntimeError, match="generator failed"):
        write_zarr_volume(tmp_path / "surface_volume.zarr", planes(), (3, 8, 8), "uint8")
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError, match="2 slices given .* expected 3"):
        write_zarr_volume(tmp_path / "surface_volume.zarr", iter(np.zeros((2, 8, 8), np.uint8)), (3, 8, 8), "uint8")
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------------------ bad input


def _bad(tmp_path: Path, case: str) -> Path:
    """A fragment folder with one thing wrong."""
    import zarr

    folder = tmp_path / "bad"
    folder.mkdir()
    volume = folder / "surface_volume.zarr"
    if case == "no metadata":
        volume.mkdir()
    elif case == "2-D volume":
        zarr.create_array(str(volume), shape=(8, 8), dtype="uint16")
    elif case == "float volume":
        zarr.create_array(str(volume), shape=(2, 8, 8), dtype="float32")
    elif case == "group without multiscales":
        zarr.open_group(str(volume), mode="w").create_array("0", shape=(2, 8, 8), dtype="uint8")
    elif case in ("mask size", "mask values", "two masks", "two volumes"):
        write_zarr_volume(volume, iter(np.zeros((2, 8, 8), np.uint8)), (2, 8, 8), "uint8")
        if case == "mask size":
            write_zarr_map(folder / "mask.zarr", np.ones((8, 9), bool))
        elif case == "mask values":
            write_zarr_map(folder / "mask.zarr", np.arange(64, dtype=np.uint8).reshape(8, 8))
        elif case == "two masks":
            write_zarr_map(folder / "mask.zarr", np.ones((8, 8), bool))
            Image.fromarray(np.full((8, 8), 255, np.uint8)).save(folder / "mask.png")
        else:
            (folder / "surface_volume").mkdir()
    elif case == "bad url file":
        (folder / "surface_volume.url").write_text("just a path\nand another line\n")
    elif case == "unknown protocol":
        (folder / "surface_volume.url").write_text("nosuchproto://bucket/x.zarr")
    return folder


@pytest.mark.parametrize(
    ("case", "error", "message"),
    [
        ("no metadata", FileNotFoundError, r"surface_volume\.zarr' holds no zarr array or group"),
        ("2-D volume", ValueError, r"surface_volume\.zarr' has 2 dimensions \(8, 8\); expected 3 \(z, y, x\)"),
        ("float volume", ValueError, r"surface_volume\.zarr' has dtype float32; expected uint8 or uint16"),
        ("group without multiscales", ValueError, r"surface_volume\.zarr' is a zarr group without OME 'multiscales'"),
        ("mask size", ValueError, r"mask '.*mask\.zarr' is 9x8 \(W x H\) but the volume's slices are 8x8"),
        ("mask values", ValueError, r"mask '.*mask\.zarr' is not binary: values \[0, 1, 2"),
        ("two masks", ValueError, r"holds both mask\.png and mask\.zarr"),
        ("two volumes", ValueError, r"holds 2 volumes \(surface_volume, surface_volume\.zarr\)"),
        ("bad url file", ValueError, r"surface_volume\.url' must hold one fsspec URL"),
        ("unknown protocol", ValueError, r"nosuchproto://bucket/x\.zarr' \(named in '.*surface_volume\.url'\)"),
    ],
)
def test_bad_input_names_the_file_and_the_problem(tmp_path, case, error, message):
    with pytest.raises(error, match=message):
        Fragment(_bad(tmp_path, case), z_start=0, z_end=1)


def test_a_missing_fsspec_protocol_says_what_to_install(tmp_path):
    pytest.importorskip("fsspec")
    try:
        import s3fs  # noqa: F401

        pytest.skip("s3fs is installed")
    except ImportError:
        pass
    folder = tmp_path / "f"
    folder.mkdir()
    (folder / "layers.url").write_text("s3://bucket/segment.zarr")
    with pytest.raises(ImportError, match=r"layers\.url'\): protocol 's3' is not installed .*pip install .*s3fs"):
        Fragment(folder, z_start=0, z_end=1)
