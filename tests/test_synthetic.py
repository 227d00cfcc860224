"""Tests of the synthetic fragment generator: layout, file variants, determinism, and that ink needs learning."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from datamodules import synthetic
from datamodules.synthetic import best_single_slice_f05, make_demo_data, make_fragment, surface_depth

H, W = 96, 128


def _slices(fragment: Path, dirname: str = "surface_volume") -> list[Path]:
    return sorted((fragment / dirname).glob("*.tif"), key=lambda p: int(p.stem))


def _volume(fragment: Path, dirname: str = "surface_volume") -> np.ndarray:
    return np.stack([tifffile.imread(p) for p in _slices(fragment, dirname)])


def _png(path: Path) -> np.ndarray:
    with Image.open(path) as img:
        return np.asarray(img)


def _best_f05(scores: np.ndarray, truth: np.ndarray) -> float:
    order = np.argsort(-scores, kind="stable")
    tp = np.cumsum(truth[order])
    fp = np.cumsum(~truth[order])
    return float((1.25 * tp / (1.25 * tp + 0.25 * (truth.sum() - tp) + fp)).max())


def _auc(scores: np.ndarray, truth: np.ndarray) -> float:
    ranks = np.empty(len(scores))
    ranks[np.argsort(scores, kind="stable")] = np.arange(1, len(scores) + 1)
    pos = int(truth.sum())
    return float((ranks[truth].sum() - pos * (pos + 1) / 2) / (pos * (len(truth) - pos)))


@pytest.fixture(scope="module")
def plain(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_fragment(tmp_path_factory.mktemp("plain") / "frag", H, W, seed=3)


def test_layout_dtypes_and_binary_pngs(plain: Path) -> None:
    names = [p.name for p in _slices(plain)]
    assert names == [f"{i:02d}.tif" for i in range(65)]
    assert sorted(p.name for p in plain.iterdir()) == ["inklabels.png", "ir.png", "mask.png", "surface_volume"]
    image = tifffile.imread(plain / "surface_volume" / "30.tif")
    assert image.dtype == np.uint16 and image.shape == (H, W)
    assert image.max() > 20000  # uses the uint16 range, not uint8 values stored as uint16
    for name in ("mask.png", "inklabels.png"):
        array = _png(plain / name)
        assert array.dtype == np.uint8 and array.shape == (H, W)
        assert set(np.unique(array).tolist()) == {0, 255}, name
    ir = _png(plain / "ir.png")
    assert ir.dtype == np.uint8 and ir.shape == (H, W) and ir.ndim == 2
    labels, mask = _png(plain / "inklabels.png") > 0, _png(plain / "mask.png") > 0
    assert not (labels & ~mask).any()  # no ink outside the papyrus


def test_uint8_variant(tmp_path: Path, plain: Path) -> None:
    fragment = make_fragment(tmp_path / "f", H, W, seed=3, dtype="uint8", depth=40)
    volume = _volume(fragment)
    assert volume.dtype == np.uint8 and volume.shape == (40, H, W)
    assert volume.max() > 100 and volume.min() < 60
    # Same fields as the uint16 fragment: the mask does not depend on dtype.
    assert np.array_equal(_png(fragment / "mask.png"), _png(plain / "mask.png"))


def test_names_get_three_digits_past_100_and_sort_numerically(tmp_path: Path) -> None:
    fragment = make_fragment(tmp_path / "deep", 16, 24, depth=101, seed=0)
    names = [p.name for p in _slices(fragment)]
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
    for path in _slices(tiled):
        with tifffile.TiffFile(path) as tif:
            page = tif.pages[0]
            assert page.is_tiled and (page.tilelength, page.tilewidth) == (64, 64)
            assert page.compression == tifffile.COMPRESSION.NONE
        assert np.array_equal(tifffile.imread(path), tifffile.imread(strips / "surface_volume" / path.name))
    with tifffile.TiffFile(_slices(strips)[0]) as tif:
        assert not tif.pages[0].is_tiled


def test_layers_dirname(tmp_path: Path) -> None:
    fragment = make_fragment(tmp_path / "seg", H, W, depth=5, layers_dirname="layers")
    assert (fragment / "layers").is_dir() and not (fragment / "surface_volume").exists()
    assert [p.name for p in _slices(fragment, "layers")] == [f"{i:02d}.tif" for i in range(5)]


def test_reverse_depth_is_the_forward_volume_reversed(tmp_path: Path, plain: Path) -> None:
    reversed_fragment = make_fragment(tmp_path / "rev", H, W, seed=3, reverse_depth=True)
    assert np.array_equal(_volume(reversed_fragment), _volume(plain)[::-1])
    assert (reversed_fragment / "inklabels.png").read_bytes() == (plain / "inklabels.png").read_bytes()


def test_without_labels_or_mask(tmp_path: Path) -> None:
    fragment = make_fragment(tmp_path / "f", H, W, depth=4, with_labels=False, with_mask=False)
    assert not (fragment / "inklabels.png").exists() and not (fragment / "mask.png").exists()
    assert (fragment / "ir.png").is_file()
    # No mask means "all valid": the papyrus then fills the whole frame, so the IR photo has no black margin.
    assert _png(fragment / "ir.png").min() > 0


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_labels_and_mask_are_non_trivial(tmp_path: Path, seed: int) -> None:
    fragment = make_fragment(tmp_path / "f", 160, 192, depth=3, seed=seed)
    mask = _png(fragment / "mask.png") > 0
    labels = _png(fragment / "inklabels.png") > 0
    assert 0.4 < mask.mean() < 0.95  # most of the fragment, with non-papyrus margins
    assert not mask[0, 0] and mask[80, 96]
    assert 0.03 < labels[mask].mean() < 0.40


def test_surface_wobbles_inside_the_default_slice_range() -> None:
    zs = surface_depth(256, 256, seed=0)
    assert zs.shape == (256, 256) and zs.dtype == np.float32
    assert 15 <= zs.min() and zs.max() + 3 <= 44  # ink within slices 15..44
    assert zs.max() - zs.min() > 4  # which slice holds the ink changes across the fragment
    assert np.abs(np.diff(zs, axis=1)).max() < 0.5  # smooth: no jumps between neighbours
    shifted = surface_depth(64, 64, depth=30, seed=0, surface_z=10.0)
    assert 10 - 3 <= shifted.min() and shifted.max() <= 10 + 3


def test_learning_is_needed_but_the_ink_is_there(tmp_path: Path) -> None:
    """No slice + global threshold finds the ink, but an oracle that knows the surface does, far better."""
    size, seed = 256, 11
    fragment = make_fragment(tmp_path / "f", size, size, seed=seed)
    bound = best_single_slice_f05(fragment)
    assert bound < 0.35

    mask = _png(fragment / "mask.png") > 0
    truth = (_png(fragment / "inklabels.png") > 0)[mask]
    volume = _volume(fragment).astype(np.float32)
    zs = surface_depth(size, size, seed=seed)
    rows, cols = np.indices(zs.shape)

    def at_depth(offset: float) -> np.ndarray:
        z = zs + offset
        z0 = np.floor(z).astype(int)
        frac = z - z0
        return volume[z0, rows, cols] * (1 - frac) + volume[z0 + 1, rows, cols] * frac

    # The oracle reads the surface (where ink sits) and the sheet interior (same fibres, no ink) along the true
    # z_s, removes the interior's share by a label-free least-squares fit, and pools over 3x3 pixels.
    surface = np.mean([at_depth(o) for o in (0.0, 0.5, 1.0)], axis=0)
    interior = np.mean([at_depth(o) for o in (2.5, 3.0, 3.5)], axis=0)
    design = np.stack([np.ones(mask.sum()), interior[mask]], axis=1)
    coef, *_ = np.linalg.lstsq(design, surface[mask], rcond=None)
    residual = np.pad(surface - coef[0] - coef[1] * interior, 1, mode="edge")
    pooled = sum(residual[dy : dy + size, dx : dx + size] for dy in range(3) for dx in range(3)) / 9
    oracle_f05 = _best_f05(pooled[mask], truth)
    assert _auc(pooled[mask], truth) > 0.8
    assert oracle_f05 > bound + 0.25, (oracle_f05, bound)


def test_best_single_slice_f05_finds_a_perfect_slice_in_either_polarity(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    labels = np.zeros((32, 40), dtype=np.uint8)
    labels[8:20, 5:30] = 255
    (tmp_path / "surface_volume").mkdir()
    slices = [rng.integers(0, 60000, labels.shape), 1000 + (labels > 0) * 500, 5000 - (labels > 0) * 700]
    for index, image in enumerate(slices):
        tifffile.imwrite(tmp_path / "surface_volume" / f"{index:02d}.tif", image.astype(np.uint16))
    float_slice = (labels > 0) * 0.25 + rng.uniform(0, 0.2, labels.shape)  # 4096 bins separate 0.2 from 0.25
    tifffile.imwrite(tmp_path / "surface_volume" / "03.tif", float_slice.astype(np.float32))
    Image.fromarray(labels).save(tmp_path / "inklabels.png")
    assert best_single_slice_f05(tmp_path, z_range=(1, 2)) == pytest.approx(1.0)  # ink brighter
    assert best_single_slice_f05(tmp_path, z_range=(2, 3)) == pytest.approx(1.0)  # ink darker
    assert best_single_slice_f05(tmp_path, z_range=(0, 1)) < 0.6
    assert best_single_slice_f05(tmp_path, z_range=(3, 4)) == pytest.approx(1.0)
    assert best_single_slice_f05(tmp_path) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="z_range"):
        best_single_slice_f05(tmp_path, z_range=(2, 5))
    Image.fromarray(labels[:16]).save(tmp_path / "mask.png")
    with pytest.raises(ValueError, match="mask.png"):
        best_single_slice_f05(tmp_path)
    (tmp_path / "inklabels.png").unlink()
    with pytest.raises(FileNotFoundError, match="inklabels.png"):
        best_single_slice_f05(tmp_path)


def test_no_temporary_files_left_even_after_a_crash(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fragment = make_fragment(tmp_path / "ok", H, W, depth=5, compression="lzw", tiled=True)
    assert all(not p.name.startswith(".") and not p.name.endswith(".partial") for p in fragment.rglob("*"))

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
    assert all(not p.name.endswith(".partial") for p in fragment.rglob("*"))


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
    assert [p.name for p in _slices(tmp_path / "f")] == [f"{i:02d}.tif" for i in range(5)]
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


def test_realism_knobs_patchy_ink_loose_labels_varying_thickness(tmp_path: Path) -> None:
    """Each knob does what it says: the clean fragment and the realistic one share strokes, mask and noise."""
    from datamodules.synthetic import FAINT_REALISM, Realism

    size, seed = 192, 5
    clean = make_fragment(tmp_path / "clean", size, size, seed=seed)
    real = make_fragment(tmp_path / "real", size, size, seed=seed, realism=FAINT_REALISM)
    mask = _png(clean / "mask.png") > 0
    np.testing.assert_array_equal(mask, _png(real / "mask.png") > 0)
    strokes = _png(clean / "inklabels.png") > 0
    loose = _png(real / "inklabels.png") > 0
    assert (loose | ~strokes).all()  # labels cover every stroke pixel ...
    assert 1.2 < loose.sum() / strokes.sum() < 3.0  # ... and a margin around it

    # Patchy ink: the realistic volume differs from the clean one at the surface of only part of the strokes.
    clean_volume, real_volume = _volume(clean).astype(np.float32), _volume(real).astype(np.float32)
    zs = surface_depth(size, size, seed=seed)
    rows, cols = np.indices(zs.shape)
    surface = np.clip(np.round(zs + 0.5).astype(int), 0, 64)
    at_surface = lambda v: v[surface, rows, cols]  # noqa: E731
    inside = mask & strokes
    assert (at_surface(real_volume) - at_surface(clean_volume))[inside].std() > 0

    # Thickness varies: the sheet's back face moves while its front does not.
    thick = make_fragment(tmp_path / "thick", size, size, seed=seed, realism=Realism(thickness_variation=0.6))
    bright = (_volume(thick)[:, mask] > _volume(clean)[:, mask].mean(axis=0).min()).sum(axis=0)
    plain_bright = (clean_volume[:, mask] > clean_volume[:, mask].mean(axis=0).min()).sum(axis=0)
    assert bright.std() > plain_bright.std()


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"ink_presence": 0.0}, "ink_presence"),
        ({"label_dilation": -1}, "label_dilation"),
        ({"thickness_variation": 1.5}, "thickness_variation"),
        ({"ink_displacement": 9.0}, "ink_displacement"),
    ],
)
def test_realism_rejects_bad_knobs(kwargs: dict, match: str) -> None:
    from datamodules.synthetic import Realism

    with pytest.raises(ValueError, match=match):
        Realism(**kwargs)


def test_faint_regime_cli_and_ink_below_the_noise(tmp_path: Path) -> None:
    from scripts.make_synthetic import main

    (fragment,) = main(["--out", str(tmp_path), "--height", "160", "--width", "160", "--faint", "--seed", "2"])
    assert best_single_slice_f05(fragment, (15, 45)) < 0.35
    assert synthetic.FAINT_INK_CONTRAST < synthetic._NOISE_SIGMA
