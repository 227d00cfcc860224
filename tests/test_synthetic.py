"""Tests of the synthetic fragment writer: layout, file variants, determinism, crash safety, the demo data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile

from datamodules import synthetic
from datamodules.synthetic import make_demo_data, make_fragment
from tests.synthetic_files import read_png, read_volume, slice_paths
from utils.atomic import TMP_SUFFIX

H, W = 96, 128


@pytest.fixture(scope="module")
def plain(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_fragment(tmp_path_factory.mktemp("plain") / "frag", H, W, seed=3)


def test_layout_dtypes_and_binary_pngs(plain: Path) -> None:
    names = [p.name for p in slice_paths(plain)]
    assert names == [f"{i:02d}.tif" for i in range(65)]
    assert sorted(p.name for p in plain.iterdir()) == ["inklabels.png", "ir.png", "mask.png", "surface_volume"]
    image = tifffile.imread(plain / "surface_volume" / "30.tif")
    assert image.dtype == np.uint16 and image.shape == (H, W)
    assert image.max() > 20000  # uses the uint16 range, not uint8 values stored as uint16
    for name in ("mask.png", "inklabels.png"):
        array = read_png(plain / name)
        assert array.dtype == np.uint8 and array.shape == (H, W)
        assert set(np.unique(array).tolist()) == {0, 255}, name
    ir = read_png(plain / "ir.png")
    assert ir.dtype == np.uint8 and ir.shape == (H, W) and ir.ndim == 2
    labels, mask = read_png(plain / "inklabels.png") > 0, read_png(plain / "mask.png") > 0
    assert not (labels & ~mask).any()  # no ink outside the papyrus


def test_uint8_variant(tmp_path: Path, plain: Path) -> None:
    fragment = make_fragment(tmp_path / "f", H, W, seed=3, dtype="uint8", depth=40)
    volume = read_volume(fragment)
    assert volume.dtype == np.uint8 and volume.shape == (40, H, W)
    assert volume.max() > 100 and volume.min() < 60
    # Same fields as the uint16 fragment: the mask does not depend on dtype.
    assert np.array_equal(read_png(fragment / "mask.png"), read_png(plain / "mask.png"))


def test_names_get_three_digits_past_100_and_sort_numerically(tmp_path: Path) -> None:
    fragment = make_fragment(tmp_path / "deep", 16, 24, depth=101, seed=0)
    names = [p.name for p in slice_paths(fragment)]
    assert names[0] == "000.tif" and names[-1] == "100.tif" and len(names) == 101
    assert names == sorted(names)  # zero padding makes name order numeric order
    assert synthetic.slice_name(5, 100) == "05.tif" and synthetic.slice_name(5, 101) == "005.tif"


def test_deterministic_for_a_seed_and_different_for_another(tmp_path: Path) -> None:
    a = make_fragment(tmp_path / "a", H, W, depth=12, seed=7)
    b = make_fragment(tmp_path / "b", H, W, depth=12, seed=7)
    c = make_fragment(tmp_path / "c", H, W, depth=12, seed=8)
    files = [p.relative_to(a) for p in sorted(a.rglob("*")) if p.is_file()]
    assert len(files) == 15
    for rel in files:
        assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel
    assert (a / "inklabels.png").read_bytes() != (c / "inklabels.png").read_bytes()
    assert not np.array_equal(
        tifffile.imread(a / "surface_volume/06.tif"), tifffile.imread(c / "surface_volume/06.tif")
    )


@pytest.mark.parametrize(
    ("compression", "code"), [("lzw", tifffile.COMPRESSION.LZW), ("zlib", tifffile.COMPRESSION.ADOBE_DEFLATE)]
)
def test_compressed_slices_hold_the_same_data(tmp_path: Path, plain: Path, compression: str, code: int) -> None:
    fragment = make_fragment(tmp_path / "f", H, W, seed=3, compression=compression)
    for index in (0, 30, 64):
        path = fragment / "surface_volume" / f"{index:02d}.tif"
        with tifffile.TiffFile(path) as tif:
            assert tif.pages[0].compression == code
        assert np.array_equal(tifffile.imread(path), tifffile.imread(plain / "surface_volume" / path.name))


def test_tiled_slices_with_sizes_not_multiple_of_64(tmp_path: Path) -> None:
    tiled = make_fragment(tmp_path / "tiled", 100, 130, depth=6, seed=1, tiled=True)
    strips = make_fragment(tmp_path / "strips", 100, 130, depth=6, seed=1)
    for path in slice_paths(tiled):
        with tifffile.TiffFile(path) as tif:
            page = tif.pages[0]
            assert page.is_tiled and (page.tilelength, page.tilewidth) == (64, 64)
            assert page.compression == tifffile.COMPRESSION.NONE
        assert np.array_equal(tifffile.imread(path), tifffile.imread(strips / "surface_volume" / path.name))
    with tifffile.TiffFile(slice_paths(strips)[0]) as tif:
        assert not tif.pages[0].is_tiled


def test_layers_dirname(tmp_path: Path) -> None:
    fragment = make_fragment(tmp_path / "seg", H, W, depth=5, layers_dirname="layers")
    assert (fragment / "layers").is_dir() and not (fragment / "surface_volume").exists()
    assert [p.name for p in slice_paths(fragment, "layers")] == [f"{i:02d}.tif" for i in range(5)]


def test_reverse_depth_is_the_forward_volume_reversed(tmp_path: Path, plain: Path) -> None:
    reversed_fragment = make_fragment(tmp_path / "rev", H, W, seed=3, reverse_depth=True)
    assert np.array_equal(read_volume(reversed_fragment), read_volume(plain)[::-1])
    assert (reversed_fragment / "inklabels.png").read_bytes() == (plain / "inklabels.png").read_bytes()


def test_without_labels_or_mask(tmp_path: Path) -> None:
    fragment = make_fragment(tmp_path / "f", H, W, depth=4, with_labels=False, with_mask=False)
    assert not (fragment / "inklabels.png").exists() and not (fragment / "mask.png").exists()
    assert (fragment / "ir.png").is_file()
    # No mask means "all valid": the papyrus then fills the whole frame, so the IR photo has no black margin.
    assert read_png(fragment / "ir.png").min() > 0


def test_no_temporary_files_left_even_after_a_crash(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fragment = make_fragment(tmp_path / "ok", H, W, depth=5, compression="lzw", tiled=True)
    assert all(not p.name.startswith(".") and not p.name.endswith(TMP_SUFFIX) for p in fragment.rglob("*"))

    real_imwrite = tifffile.imwrite
    calls = []

    def failing_imwrite(*args: object, **kwargs: object) -> None:
        calls.append(1)
        if len(calls) == 3:
            real_imwrite(*args, **kwargs)  # the file is written in full, then the process "dies"
            raise OSError("disk full")
        real_imwrite(*args, **kwargs)

    monkeypatch.setattr(tifffile, "imwrite", failing_imwrite)
    with pytest.raises(OSError, match="disk full"):
        make_fragment(tmp_path / "crash", H, W, depth=5)
    volume_dir = tmp_path / "crash" / "surface_volume"
    assert sorted(p.name for p in volume_dir.iterdir()) == ["00.tif", "01.tif"]  # nothing half-written
    assert not (tmp_path / "crash" / "mask.png").exists()

    # A crash while rewriting a complete fragment must not leave it looking complete (old + new slices).
    calls.clear()
    with pytest.raises(OSError, match="disk full"):
        make_fragment(fragment, H, W, depth=5, seed=1)
    assert not (fragment / "mask.png").exists()
    assert all(not p.name.endswith(TMP_SUFFIX) for p in fragment.rglob("*"))


def test_make_demo_data_is_idempotent_and_repairs_incomplete_fragments(tmp_path: Path) -> None:
    paths = make_demo_data(tmp_path / "data", num_fragments=2, height=48, width=64, depth=6, seed=5)
    assert [p.name for p in paths] == ["frag1", "frag2"]
    files = sorted(p for p in (tmp_path / "data").rglob("*") if p.is_file())
    assert len(files) == 2 * (6 + 3)
    mtimes = {p: p.stat().st_mtime_ns for p in files}
    assert make_demo_data(tmp_path / "data", num_fragments=2, height=48, width=64, depth=6, seed=5) == paths
    assert {p: p.stat().st_mtime_ns for p in files} == mtimes
    # frag2 uses seed + 1, like a fragment written on its own.
    alone = make_fragment(tmp_path / "alone", 48, 64, depth=6, seed=6)
    assert (alone / "inklabels.png").read_bytes() == (paths[1] / "inklabels.png").read_bytes()

    (paths[0] / "mask.png").unlink()  # as if the run had crashed before the last file
    make_demo_data(tmp_path / "data", num_fragments=2, height=48, width=64, depth=6, seed=5)
    assert (paths[0] / "mask.png").is_file()
    assert (paths[1] / "mask.png").stat().st_mtime_ns == mtimes[paths[1] / "mask.png"]


def test_rewriting_removes_stale_slices_and_refuses_a_second_slice_folder(tmp_path: Path) -> None:
    make_fragment(tmp_path / "f", 32, 32, depth=8)
    make_fragment(tmp_path / "f", 32, 32, depth=5, with_labels=False)
    assert [p.name for p in slice_paths(tmp_path / "f")] == [f"{i:02d}.tif" for i in range(5)]
    assert not (tmp_path / "f" / "inklabels.png").exists()  # old labels would not match the new volume
    with pytest.raises(ValueError, match="surface_volume/ slice folder"):
        make_fragment(tmp_path / "f", 32, 32, depth=5, layers_dirname="layers")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"dtype": "float32"}, "dtype"),
        ({"compression": "jpeg"}, "compression"),
        ({"height": 0}, "height"),
        ({"depth": 0}, "depth"),
        ({"seed": -1}, "seed"),
        ({"surface_z": 80.0}, "surface_z"),
        ({"surface_z": "30"}, "surface_z"),
        ({"layers_dirname": "a/b"}, "layers_dirname"),
    ],
)
def test_bad_arguments_are_named(tmp_path: Path, kwargs: dict, match: str) -> None:
    args = {"height": H, "width": W, **kwargs}
    with pytest.raises(ValueError, match=match):
        make_fragment(tmp_path / "f", args.pop("height"), args.pop("width"), **args)
    with pytest.raises(ValueError, match="num_fragments"):
        make_demo_data(tmp_path / "d", num_fragments=0)


def test_cli_writes_fragments_with_the_requested_options(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from scripts.make_synthetic import main

    argv = ["--out", str(tmp_path), "--num-fragments", "2", "--height", "40", "--width", "70", "--depth", "4"]
    paths = main([*argv, "--compression", "zlib", "--layers-dirname", "layers", "--no-labels", "--dtype", "uint8"])
    assert [p.name for p in paths] == ["frag1", "frag2"]
    first = tmp_path / "frag1" / "layers" / "00.tif"
    with tifffile.TiffFile(first) as tif:
        assert tif.pages[0].compression == tifffile.COMPRESSION.ADOBE_DEFLATE and tif.pages[0].dtype == np.uint8
    assert not (tmp_path / "frag1" / "inklabels.png").exists()
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    assert "--reverse-depth" in capsys.readouterr().out
