"""InkDataModule with ``z_window: auto`` and ``reverse_depth: auto`` (datamodules/reading/layer_window.py)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from datamodules.augment.transforms import AugmentConfig
from datamodules.ink_datamodule import InkDataModule
from datamodules.reading.intensity import intensity_range
from datamodules.synthetic import make_fragment
from tests.test_depth_profile import reversed_copy

TILE = 32


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``a`` (65 layers, surface near 29, window of 12 → [24, 36)), ``a_rev`` (its reversed copy), ``c`` (21 layers)."""
    root = tmp_path_factory.mktemp("windows") / "data"
    original = make_fragment(root / "a", 64, 64, seed=0)
    reversed_copy(original, root / "a_rev")
    make_fragment(root / "c", 64, 64, depth=21, seed=1)
    return root


def _dm(data_dir: Path, **overrides: Any) -> InkDataModule:
    settings: dict[str, Any] = dict(
        data_dir=str(data_dir),
        z_start=0,
        z_end=12,
        tile_size=TILE,
        eval_stride=TILE,
        batch_size=4,
        num_workers=0,
        persistent_workers=False,
        augment=AugmentConfig(enabled=False),
    )
    settings.update(overrides)
    return InkDataModule(**settings)


def _tiles(dm: InkDataModule) -> dict[tuple[str, int, int], np.ndarray]:
    """Every prediction tile's model input, by (fragment, y, x)."""
    dm.setup("predict")
    tiles = {}
    for batch in dm.predict_dataloader():
        for name, (y, x), image in zip(batch["fragment"], batch["yx"].tolist(), batch["image"].numpy()):
            tiles[name, y, x] = image
    return tiles


def _windows(dm: InkDataModule) -> dict[str, tuple[int, int, bool]]:
    return {f.id: (f.z_start, f.z_end, f.reverse_depth) for f in dm.fragments("predict")}


def test_auto_windows_and_order_per_fragment(data_dir, caplog):
    dm = _dm(data_dir, z_window="auto", reverse_depth="auto")
    with caplog.at_level(logging.INFO):
        tiles = _tiles(dm)
    # The reversed copy is read flipped, so its window (in the order after reversal) is the original's.
    windows = _windows(dm)
    assert windows["a"] == (24, 36, False) and windows["a_rev"] == (24, 36, True)
    assert windows["c"][2] is False and windows["c"][1] - windows["c"][0] == 12 and windows["c"][0] in (2, 3, 4)
    assert dm.num_slices == 12
    for fragment in dm.fragments("predict"):  # normalised over the fragment's own window, not z_start..z_end
        assert fragment.intensity == intensity_range(fragment, fragment.z_start, fragment.z_end)
    # Same pixels, same normalisation: the reversed copy yields the original's tiles.
    keys = [k for k in tiles if k[0] == "a"]
    assert len(keys) == 4
    for _, y, x in keys:
        np.testing.assert_array_equal(tiles["a_rev", y, x], tiles["a", y, x])
    assert "fragment 'a_rev': 65 layers, surface at layer 34.9 (reversed order), window [24, 36)" in caplog.text


def test_reverse_depth_auto_with_a_fixed_window(data_dir):
    dm = _dm(data_dir, z_start=20, z_end=32, reverse_depth="auto", predict_fragments=["a", "a_rev"])
    tiles = _tiles(dm)
    assert _windows(dm) == {"a": (20, 32, False), "a_rev": (20, 32, True)}
    for _, y, x in [k for k in tiles if k[0] == "a"]:
        np.testing.assert_array_equal(tiles["a_rev", y, x], tiles["a", y, x])


def test_an_auto_window_follows_a_listed_order(data_dir):
    """Not reversed, the copy's window is the mirror in stored order: the same slices, in the opposite order."""
    dm = _dm(data_dir, z_window="auto", normalization="dtype", predict_fragments=["a", "a_rev"])
    with pytest.warns(UserWarning, match=r"fragment 'a_rev' is not listed in reverse_depth, but .* looks reversed"):
        tiles = _tiles(dm)
    assert _windows(dm) == {"a": (24, 36, False), "a_rev": (65 - 36, 65 - 24, False)}
    for _, y, x in [k for k in tiles if k[0] == "a"]:
        np.testing.assert_array_equal(tiles["a_rev", y, x], tiles["a", y, x][::-1])


def test_a_listed_order_the_profile_contradicts_is_warned_about(data_dir):
    dm = _dm(data_dir, z_window="auto", reverse_depth=["a"], predict_fragments=["a"])
    with pytest.warns(UserWarning, match=r"fragment 'a' is listed in reverse_depth, but its depth profile looks"):
        dm.setup("predict")
    assert _windows(dm) == {"a": (65 - 36, 65 - 24, True)}  # still centred on the surface


def test_the_fixed_window_is_unchanged(data_dir):
    dm = _dm(data_dir, z_start=3, z_end=9)
    dm.setup("predict")
    assert set(_windows(dm).values()) == {(3, 9, False)}


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"z_window": "centre"}, r"z_window must be one of \['fixed', 'auto'\], got 'centre'"),
        ({"reverse_depth": "a"}, r"reverse_depth must be a list of fragment names or 'auto', got 'a'"),
    ],
)
def test_bad_settings_are_refused(data_dir, settings, message):
    with pytest.raises(ValueError, match=message):
        _dm(data_dir, **settings)


def test_an_input_deeper_than_a_fragment_is_refused_naming_both(data_dir):
    dm = _dm(data_dir, z_start=0, z_end=30, z_window="auto", reverse_depth="auto")
    with pytest.raises(ValueError, match=r"fragment 'c' has 21 layers, fewer than the model's input depth 30"):
        dm.setup("predict")


def test_the_cli_accepts_auto_window_and_order(data_dir, tmp_path, monkeypatch, capsys):
    from lightning_app.cli import cli_main

    monkeypatch.chdir(tmp_path)
    args = ["fit", "--data.data_dir", str(data_dir), "--data.z_window", "auto", "--data.reverse_depth", "auto"]
    with pytest.raises(SystemExit) as exit_info:
        cli_main([*args, "--print_config"])
    assert exit_info.value.code == 0
    printed = yaml.safe_load(capsys.readouterr().out)["data"]
    assert printed["window"]["z_window"] == "auto" and printed["window"]["reverse_depth"] == "auto"
