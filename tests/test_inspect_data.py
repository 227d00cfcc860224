"""scripts/inspect_data.py: the layer-window pre-flight's table, JSON and profile chart."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from datamodules.synthetic import make_fragment
from scripts.inspect_data import main
from tests.test_depth_profile import reversed_copy

KEYS = {"id", "layers", "surface", "reversed", "z_start", "z_end", "dtype", "shape", "confident", "error"}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``frag`` (65 layers, surface near 30), ``frag_rev`` (its reversed copy) and ``seg21`` (21 layers, uint8)."""
    root = tmp_path_factory.mktemp("inspect") / "data"
    original = make_fragment(root / "frag", 64, 64, seed=0)
    reversed_copy(original, root / "frag_rev")
    make_fragment(root / "seg21", 48, 80, depth=21, seed=2, dtype="uint8", layers_dirname="layers")
    return root


def run(capsys: Any, *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main([*args])
    out, err = capsys.readouterr()
    return code, out, err


def test_json_lists_every_fragment_with_its_window_in_stored_order(data_dir, capsys):
    code, out, _ = run(capsys, str(data_dir), "--json", "--depth", "20")
    assert code == 0
    reports = {r["id"]: r for r in json.loads(out)}  # nothing but JSON on stdout
    assert sorted(reports) == ["frag", "frag_rev", "seg21"]
    assert all(KEYS <= set(r) for r in reports.values())
    frag, rev, seg = reports["frag"], reports["frag_rev"], reports["seg21"]
    assert (frag["reversed"], rev["reversed"]) == (False, True)
    assert (frag["z_start"], frag["z_end"]) == (20, 40)  # 20 layers around the surface near 30
    assert (rev["z_start"], rev["z_end"]) == (65 - 40, 65 - 20)
    assert rev["surface"] == pytest.approx(64 - frag["surface"], abs=0.011)  # rounded to 2 decimals
    assert frag["shape"] == [65, 64, 64] and frag["dtype"] == "uint16" and frag["layers"] == 65
    assert seg["layers"] == 21 and seg["dtype"] == "uint8" and seg["shape"] == [21, 48, 80]
    assert seg["z_end"] - seg["z_start"] == 20 and 0 <= seg["z_start"] and seg["z_end"] <= 21
    assert all(r["error"] is None and r["confident"] for r in reports.values())


def test_the_table_shows_the_default_window(data_dir, capsys):
    code, out, _ = run(capsys, str(data_dir), "--fragments", "frag_rev", "frag")
    assert code == 0
    rows = [line.split() for line in out.splitlines()[1:3]]
    assert [row[0] for row in rows] == ["frag_rev", "frag"]  # in the order asked
    assert rows[1][:3] == ["frag", "65", "uint16"] and rows[1][5:8] == ["normal", "[15,", "45)"]
    assert rows[0][5:8] == ["reversed", "[20,", "50)"]


def test_the_plot_is_written_atomically(data_dir, tmp_path, capsys):
    target = tmp_path / "charts" / "profiles.png"
    code, out, err = run(capsys, str(data_dir), "--json", "--depth", "20", "--plot", str(target))
    assert code == 0 and json.loads(out) and str(target) in err
    with Image.open(target) as image:
        assert image.format == "PNG" and image.mode == "RGB" and image.width == 720
        pixels = np.asarray(image)
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 4  # curves in several colours, not a blank canvas
    assert [p.name for p in target.parent.iterdir()] == ["profiles.png"]  # no temporary file left


def test_a_window_deeper_than_a_fragment_is_reported_per_fragment(data_dir, capsys):
    code, out, _ = run(capsys, str(data_dir), "--json", "--depth", "30")
    assert code == 1
    seg = next(r for r in json.loads(out) if r["id"] == "seg21")
    assert seg["z_start"] is None and seg["surface"] is not None
    assert "fragment 'seg21' has 21 layers, fewer than the model's input depth 30" in seg["error"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--fragments", "nope"], "fragment(s) ['nope'] not found"),
        (["--depth", "0"], "--depth must be >= 1"),
    ],
)
def test_bad_arguments_fail_in_one_line(data_dir, capsys, args, message):
    code, out, err = run(capsys, str(data_dir), *args)
    assert code == 1 and out == ""
    assert err.startswith("error: ") and message in err and len(err.splitlines()) == 1


def test_a_folder_without_fragments_fails_in_one_line(tmp_path, capsys):
    code, _, err = run(capsys, str(tmp_path))
    assert code == 1 and "no fragment found" in err


def test_it_says_which_files_each_segment_will_use(tmp_path, capsys):
    data = tmp_path / "segments"
    common = {"depth": 21, "layers_dirname": "layers"}
    make_fragment(data / "20230530164535", 64, 48, map_layout="segment", label_style="grey", **common)
    make_fragment(data / "20231106155351", 64, 48, map_layout="monorepo", label_suffix=".tiff", **common)
    make_fragment(data / "20231210132040", 64, 48, with_mask=False, with_labels=False, **common)
    code, out, _ = run(capsys, str(data), "--depth", "12")
    assert code == 0
    assert "inklabels    20230530164535_inklabels.png: png grey 8-bit, grey:" in out
    assert "note         inklabels: 20231106155351_inklabels_v2.tiff (newest of v1, v2)" in out
    assert "validation   20231106155351_validation_mask.png" in out
    assert "mask         no mask: every pixel counts as papyrus" in out
    code, out, _ = run(capsys, str(data), "--json", "--depth", "12", "--label-threshold", "0.9")
    reports = {r["id"]: r for r in json.loads(out)}
    grey = reports["20230530164535"]["labels"]
    assert grey["kind"] == "grey" and grey["threshold"] == 0.9 and 0 < grey["ink_fraction"] < 1
    assert reports["20231106155351"]["files"]["supervision"] == "20231106155351_supervision_mask.png"
    assert reports["20231210132040"]["files"]["mask"] is None and reports["20231210132040"]["labels"] is None
