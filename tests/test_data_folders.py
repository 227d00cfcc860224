"""A user's own data folder: every fragment found is used, demo data is never written into it, names stay with theirs.

Covers `InkDataModule` (prepare_data, setup) and ``fit --data.data_dir`` with no other data setting.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from datamodules.ink_datamodule import InkDataModule
from datamodules.synthetic import make_demo_data
from lightning_app.cli import cli_main
from tests.test_cli import one_thread  # noqa: F401 - fixture


def own_fragments(folder: Path, names: tuple[str, ...] = ("alpha", "beta")) -> Path:
    """Labelled 96 × 96 × 20 fragments under names the demo never uses."""
    make_demo_data(folder, num_fragments=len(names), height=96, width=96, depth=20)
    for i, name in enumerate(names, start=1):
        (folder / f"frag{i}").rename(folder / name)
    return folder


def test_fit_with_only_a_data_dir_trains_and_validates_on_every_fragment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    data_dir = own_fragments(tmp_path / "mine")
    tiny = ["--model.net.encoder", "tiny3d", "--model.net.decoder_channels", "[16, 8, 8]", "--data.tile_size", "32"]
    small = ["--data.z_start", "4", "--data.z_end", "16", "--data.samples_per_epoch", "16", "--data.num_workers", "0"]
    cli = cli_main(
        ["fit", "--data.data_dir", str(data_dir), *tiny, *small, "--max_epochs", "1", "--test_after_fit", "false"]
        + ["--disable_callbacks", "[cam, eval_images]", "--data.folds", "3"]
    )
    datamodule = cli.datamodule
    assert cli.trainer.current_epoch == 1
    assert datamodule.settings.demo.enabled is False and datamodule.settings.splits.train_fragments is None
    fragments = datamodule.fragments("train")
    trained_on = {fragments[i].id for i in datamodule.tiles("train").windows[:, 0].tolist()}
    assert trained_on == {"alpha", "beta"}
    assert set(datamodule.fragment_shapes("validate")) == {"alpha", "beta"}  # band val_fold of each
    assert sorted(p.name for p in data_dir.iterdir() if not p.name.startswith(".")) == ["alpha", "beta"]


def test_demo_data_is_never_written_into_a_folder_that_is_not_the_demos(tmp_path: Path) -> None:
    folder = tmp_path / "zarr_fragments"
    (folder / "20230101.zarr").mkdir(parents=True)
    (folder / "notes.txt").write_text("mine")
    datamodule = InkDataModule(data_dir=str(folder), demo=True, demo_size=48, demo_fragments=1, tile_size=32)
    with pytest.raises(FileNotFoundError, match=r"no fragment found in data_dir.*surface_volume/ or layers/.*demo"):
        datamodule.prepare_data()
    assert sorted(p.name for p in folder.iterdir()) == ["20230101.zarr", "notes.txt"]


def test_demo_data_is_written_into_a_new_or_demo_folder(tmp_path: Path) -> None:
    folder = tmp_path / "demo"
    (folder / "frag1").mkdir(parents=True)  # a demo fragment left half-written
    settings = {"demo": True, "demo_size": 48, "demo_fragments": 1, "tile_size": 32, "z_start": 4, "z_end": 16}
    InkDataModule(data_dir=str(folder), **settings).prepare_data()
    assert (folder / "frag1" / "inklabels.png").is_file()
    InkDataModule(data_dir=str(tmp_path / "new"), **settings).prepare_data()
    assert (tmp_path / "new" / "frag1" / "mask.png").is_file()


def test_a_folder_without_fragments_names_what_a_fragment_folder_holds(tmp_path: Path) -> None:
    (tmp_path / "empty_fragment").mkdir()
    with pytest.raises(FileNotFoundError, match=r"expected sub-folders holding surface_volume/ or layers/"):
        InkDataModule(data_dir=str(tmp_path)).prepare_data()


def test_reverse_depth_may_name_fragments_of_another_folder_outside_fit(tmp_path: Path) -> None:
    """A checkpoint's reverse_depth names its training fragments; predicting another folder is no typo."""
    data_dir = own_fragments(tmp_path / "train")
    new = own_fragments(tmp_path / "new", names=("gamma",))
    settings = {"tile_size": 32, "z_start": 4, "z_end": 16, "reverse_depth": ["alpha"], "folds": 3}
    datamodule = InkDataModule(data_dir=str(data_dir), predict_dir=str(new), **settings)
    datamodule.setup("predict")
    assert [f.id for f in datamodule.fragments("predict")] == ["gamma"]
    InkDataModule(data_dir=str(new), **settings).setup("test")
    with pytest.raises(ValueError, match=r"reverse_depth names unknown fragment\(s\) \['alpha'\]"):
        InkDataModule(data_dir=str(new), **settings).setup("fit")
