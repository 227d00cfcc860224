"""Fragment discovery in the community's layouts and through a manifest: names, versions, ambiguity, bad manifests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from datamodules.reading.fragment import Fragment
from datamodules.reading.layouts import discover_sources, find_maps, find_sources, read_manifest
from datamodules.synthetic import make_fragment
from datamodules.synthetic.zarr_writer import write_zarr_map, write_zarr_volume
from tests.conftest import write_fragment

SEGMENT = "20230530164535"


def _png(path: Path, array: np.ndarray) -> Path:
    Image.fromarray(array.astype(np.uint8)).save(path)
    return path


def _segment(tmp_path: Path, name: str = SEGMENT, shape: tuple[int, int, int] = (4, 24, 20)) -> Path:
    """A segment folder with ``layers/000.tif …`` (3-digit padding) and no maps."""
    volume = np.random.default_rng(0).integers(0, 60000, size=shape, dtype=np.uint16)
    folder = write_fragment(tmp_path / name, volume, dirname="layers", digits=3)
    for path in folder.glob("*.png"):
        path.unlink()
    return folder


def test_each_published_layout_is_found_without_renaming(tmp_path: Path) -> None:
    kaggle = make_fragment(tmp_path / "kaggle" / "frag1", 32, 32, depth=6)
    segment = make_fragment(tmp_path / "gp" / SEGMENT, 32, 32, depth=6, layers_dirname="layers", map_layout="segment")
    mono = make_fragment(tmp_path / "mono" / SEGMENT, 96, 96, depth=6, map_layout="monorepo", label_suffix=".tif")
    found = {name: find_sources(folder) for name, folder in (("kaggle", kaggle), ("gp", segment), ("mono", mono))}
    assert found["kaggle"].layout == "kaggle" and found["kaggle"].maps["inklabels"].name == "inklabels.png"
    assert found["gp"].layout == "segment" and found["gp"].volume.name == "layers"
    assert {r: p.name for r, p in found["gp"].maps.items()} == {
        "mask": f"{SEGMENT}_mask.png",
        "inklabels": f"{SEGMENT}_inklabels.png",
    }
    mono_maps = {r: p.name for r, p in found["mono"].maps.items()}
    assert mono_maps == {
        "mask": f"{SEGMENT}_mask.png",
        "inklabels": f"{SEGMENT}_inklabels_v2.tif",  # the newest version wins over the unversioned v1
        "supervision": f"{SEGMENT}_supervision_mask.png",
        "validation": f"{SEGMENT}_validation_mask.png",
    }
    assert found["mono"].notes == (f"inklabels: {SEGMENT}_inklabels_v2.tif (newest of v1, v2)",)
    fragment = Fragment(found["mono"], z_start=0, z_end=6)
    assert fragment.id == SEGMENT and fragment.labels.sum() > 0  # v1 is empty: v2 was read


def test_versions_count_numerically_and_other_names_are_not_taken(tmp_path: Path) -> None:
    folder = _segment(tmp_path)
    ones = np.full((24, 20), 255)
    for name in ("inklabels_v2", "inklabels_v10", "inklabels", "flat_mask", "supervision_mask", "validation_mask_v3"):
        _png(folder / f"{SEGMENT}_{name}.png", ones)
    _png(folder / "19990101_inklabels.png", ones)  # another segment's labels, copied here by mistake
    maps, notes, layout = find_maps(folder)
    assert maps["inklabels"].name == f"{SEGMENT}_inklabels_v10.png"
    assert "mask" not in maps  # neither flat_mask nor supervision_mask is the papyrus mask
    assert maps["supervision"].name == f"{SEGMENT}_supervision_mask.png"
    assert maps["validation"].name == f"{SEGMENT}_validation_mask_v3.png"
    assert layout == "segment"
    assert any("19990101_inklabels.png' names another id" in note for note in notes)
    assert any("newest of v1, v2, v10" in note for note in notes)


def test_a_suffixed_folder_finds_the_files_of_its_segment(tmp_path: Path) -> None:
    folder = _segment(tmp_path, name=f"{SEGMENT}_superseded")
    _png(folder / f"{SEGMENT}_inklabels.png", np.full((24, 20), 255))
    _png(folder / f"{SEGMENT}_mask.png", np.full((24, 20), 255))
    sources = find_sources(folder)
    assert sources.id == f"{SEGMENT}_superseded" and set(sources.maps) == {"inklabels", "mask"}


@pytest.mark.parametrize(
    ("names", "message"),
    [
        (
            ("mask.png", f"{SEGMENT}_mask.png"),
            rf"two mask files of different naming: mask\.png and {SEGMENT}_mask\.png",
        ),
        ((f"{SEGMENT}_inklabels.png", f"{SEGMENT}_inklabels.tiff"), r"holds both .*_inklabels\.png and .*\.tiff"),
        ((f"{SEGMENT}_inklabels.png", f"{SEGMENT}_inklabels_v1.png"), r"\(inklabels, version 1\): keep one"),
    ],
)
def test_two_candidates_for_one_role_are_one_line_naming_both(tmp_path: Path, names: tuple, message: str) -> None:
    folder = _segment(tmp_path)
    for name in names:
        _png(folder / name, np.zeros((24, 20)))
    with pytest.raises(ValueError, match=message) as err:
        find_sources(folder)
    assert "\n" not in str(err.value)


def test_volume_names_of_the_monorepo(tmp_path: Path) -> None:
    for name in ("surface-volume.zarr", f"{SEGMENT}.zarr"):
        folder = tmp_path / name.split(".")[0] / SEGMENT
        folder.mkdir(parents=True)
        write_zarr_volume(folder / name, iter(np.ones((3, 16, 16), np.uint8)), (3, 16, 16), "uint8")
        assert find_sources(folder).volume.name == name
        assert Fragment(folder, z_start=0, z_end=3).backend == "zarr"


def test_a_monorepo_label_volume_is_read_as_its_maximum_over_depth(tmp_path: Path) -> None:
    """The label converter writes (z, y, x) OME-Zarr label volumes, the 2-D label in one plane."""
    import zarr

    folder = _segment(tmp_path)
    labels = np.zeros((5, 24, 20), np.uint8)
    labels[2, 4:10, 3:8] = 255
    group = zarr.open_group(str(folder / f"{SEGMENT}_inklabels.zarr"), mode="w", zarr_format=2)
    group.create_array("0", shape=labels.shape, dtype="uint8", chunks=(5, 8, 8))[:] = labels
    axes = [{"name": a, "type": "space"} for a in "zyx"]
    group.attrs["multiscales"] = [{"version": "0.4", "axes": axes, "datasets": [{"path": "0"}]}]
    write_zarr_map(folder / f"{SEGMENT}_supervision_mask.zarr", np.ones((24, 20), bool))
    fragment = Fragment(folder, z_start=0, z_end=4)
    assert int(fragment.labels.sum()) == 30 and fragment.labels[5, 4]
    assert fragment.ignore is None  # supervised everywhere


def test_a_manifest_names_files_anywhere_and_writes_only_its_cache(tmp_path: Path) -> None:
    volume_home = make_fragment(tmp_path / "scans" / "scan_a", 32, 32, depth=6, with_labels=False)
    labels = np.zeros((32, 32), np.uint8)
    labels[8:16, 8:16] = 200
    (tmp_path / "labels").mkdir()
    label_file = _png(tmp_path / "labels" / "a.png", labels)
    before = sorted(p.name for p in volume_home.rglob("*"))
    manifest = tmp_path / "fragments.yaml"
    manifest.write_text(
        "fragments:\n"
        f"  - id: {SEGMENT}\n"
        "    volume: scans/scan_a/surface_volume\n"
        "    mask: scans/scan_a/mask.png\n"
        "    inklabels: labels/a.png\n"
        "  - folder: scans/scan_a\n"
        "    id: again\n"
    )
    sources = read_manifest(manifest)
    assert [s.id for s in sources] == [SEGMENT, "again"] and discover_sources(manifest)[0].id == SEGMENT
    assert sources[0].maps["inklabels"] == label_file and sources[1].maps["mask"].name == "mask.png"
    fragment = Fragment(sources[0], z_start=0, z_end=6)
    assert int(fragment.labels.sum()) == 64
    assert fragment.cache_dir == tmp_path / ".ink_cache" / SEGMENT
    assert sorted(p.name for p in volume_home.rglob("*")) == before  # nothing written beside the data


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("fragments: []\n", r"must hold 'fragments:', a non-empty list"),
        ("fragments:\n  - volume: nowhere\n", r"entry 1 volume: '.*nowhere' does not exist"),
        ("fragments:\n  - volume: v\n    labels: v\n", r"entry 1: unknown key\(s\) \['labels'\]"),
        ("fragments:\n  - volume: v\n", r"entry 1: give 'id'"),
        ("fragments:\n  - {id: 1, volume: v}\n  - {id: '1', volume: v}\n", r"id '1' is listed twice"),
        ("fragments:\n  - id: x\n    mask: v\n", r"entry 1: give 'volume'"),
        ("fragments: [", r"cannot be read"),
        ("fragments:\n  - {id: 2.5, volume: v}\n", r"entry 1: fragment id 2\.5 must be a string or an integer"),
    ],
)
def test_bad_manifests_are_named(tmp_path: Path, text: str, message: str) -> None:
    (tmp_path / "v").mkdir()
    manifest = tmp_path / "m.yaml"
    manifest.write_text(text)
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        read_manifest(manifest)
