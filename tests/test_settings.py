"""The data module's settings groups: checked where defined, and the flat keys of earlier versions still understood."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
import yaml

from datamodules.augment.transforms import AugmentConfig
from datamodules.ink_datamodule import InkDataModule
from datamodules.settings import FLAT_KEYS, GROUPS, TileConfig, WindowConfig, group_flat_settings
from lightning_app.ckpt_contract import read_contract
from lightning_app.legacy_args import regroup_data_args


def test_groups_and_flat_keys_build_the_same_settings() -> None:
    grouped = InkDataModule(
        data_dir="d", window=WindowConfig(z_start=4, z_end=16), tiles=TileConfig(tile_size=32, samples_per_epoch=8)
    )
    flat = InkDataModule(data_dir="d", z_start=4, z_end=16, tile_size=32, samples_per_epoch=8)
    assert grouped.settings == flat.settings and grouped.num_slices == 12 and flat.stride == 16
    demo = InkDataModule(demo=True, demo_size=48, demo_fragments=1)
    assert (demo.settings.demo.enabled, demo.settings.demo.size, demo.settings.demo.fragments) == (True, 48, 1)


def test_every_flat_key_of_the_former_signature_has_a_home() -> None:
    former = {
        "train_fragments", "val_fragments", "test_fragments", "predict_fragments", "predict_dir", "z_start", "z_end",
        "reverse_depth", "z_window", "tile_size", "stride", "eval_stride", "min_valid_fraction", "folds", "val_fold",
        "test_fold", "split_gap", "ink_ratio", "samples_per_epoch", "jitter", "batch_size", "eval_batch_size",
        "num_workers", "pin_memory", "persistent_workers", "prefetch_factor", "cache_dir", "chunk_cache_mb",
        "normalization", "intensity_percentiles", "demo", "demo_size", "demo_fragments", "demo_ink_contrast", "seed",
    }  # fmt: skip
    assert former == set(FLAT_KEYS)
    for group, key in FLAT_KEYS.values():
        assert key in {f.name for f in dataclasses.fields(GROUPS[group])}


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"z_start": 10, "z_end": 5}, r"z_start=10, z_end=5: need 0 <= z_start < z_end"),
        ({"tile_size": 0}, r"tile_size"),
        ({"normalization": "global"}, r"normalization must be one of"),
        ({"min_valid_fraction": 2.0}, r"min_valid_fraction=2.0: must be in \[0, 1\]"),
        ({"num_workers": -1}, r"num_workers"),
        ({"tile_sise": 32}, r"InkDataModule has no setting\(s\) \['tile_sise'\]"),
        ({"window": {"z_begin": 3}}, r"data.window has no setting\(s\) \['z_begin'\]"),
    ],
)
def test_bad_settings_are_named(settings: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        InkDataModule(**settings)


def test_hyperparameters_are_plain_data_one_block_per_group() -> None:
    datamodule = InkDataModule(data_dir="d", z_start=4, z_end=16, train_fragments=[20230530164535])
    hparams = dict(datamodule.hparams)
    assert set(hparams) == {"data_dir", *GROUPS, "augment", "labels"}
    assert hparams["window"]["z_start"] == 4 and hparams["splits"]["train_fragments"] == ["20230530164535"]
    assert all(isinstance(v, (dict, str)) for v in hparams.values())  # no class for a checkpoint to unpickle


def test_flat_command_line_keys_move_into_their_groups() -> None:
    args = ["fit", "--data.z_start", "4", "--data.tile_size=32", "--data.demo_size", "48", "--data.window.z_end", "16"]
    assert regroup_data_args(args) == [
        "fit", "--data.window.z_start", "4", "--data.tiles.tile_size=32", "--data.demo.size", "48",
        "--data.window.z_end", "16",
    ]  # fmt: skip
    assert regroup_data_args(["--data.data_dir", "x", "--model.net.encoder", "tiny3d"])[1] == "x"


def test_a_config_saved_by_an_earlier_version_is_read_grouped(tmp_path: Path) -> None:
    old = tmp_path / "config.yaml"
    old.write_text(yaml.safe_dump({"data": {"data_dir": "d", "z_start": 4, "tile_size": 32, "demo": True}}))
    args = regroup_data_args(["fit", "--config", str(old)])
    regrouped = yaml.safe_load(args[2])
    assert regrouped["data"] == {
        "data_dir": "d",
        "window": {"z_start": 4},
        "tiles": {"tile_size": 32},
        "demo": {"enabled": True},
    }
    wrapped = tmp_path / "wrapped.yaml"
    wrapped.write_text(yaml.safe_dump({"data": {"class_path": "x.Y", "init_args": {"batch_size": 8}}}))
    assert yaml.safe_load(regroup_data_args([f"--config={wrapped}"])[0].split("=", 1)[1])["data"]["init_args"] == {
        "loader": {"batch_size": 8}
    }
    grouped = tmp_path / "grouped.yaml"
    grouped.write_text(yaml.safe_dump({"data": {"window": {"z_start": 4}}}))
    assert regroup_data_args(["-c", str(grouped)]) == ["-c", str(grouped)]  # nothing to move: the file itself


def test_a_checkpoint_saved_with_flat_data_settings_gives_its_contract(tmp_path: Path) -> None:
    flat = {
        "data_dir": "d",
        "z_start": 4,
        "z_end": 16,
        "tile_size": 32,
        "test_fragments": ["f"],
        "augment": AugmentConfig(),
    }
    torch.save({"state_dict": {}, "hyper_parameters": {}, "datamodule_hyper_parameters": flat}, tmp_path / "o.ckpt")
    contract = read_contract(tmp_path / "o.ckpt")
    assert contract.data_input["data.window.z_start"] == 4 and contract.data_input["data.tiles.tile_size"] == 32
    assert contract.data_input["data.augment.depth_shift"] == AugmentConfig().depth_shift
    assert contract.data_folder["data.splits.test_fragments"] == ["f"] and contract.data_dir == "d"
    assert group_flat_settings({"window": {"z_end": 9}, "z_start": 2}) == {"window": {"z_end": 9, "z_start": 2}}
