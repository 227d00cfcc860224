"""Label rounds end to end, as a user runs them: round 0, pseudo-labels, round 1 on both, the table."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import pytest
import yaml

from datamodules.synthetic.fragments import make_fragment
from lightning_app.cli import cli_main
from lightning_app.label_rounds import label_rounds_main
from lightning_app.pseudo_label import pseudo_label_main
from utils.checkpoints import load_checkpoint

pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.slow]

TINY = ["--model.net.encoder", "tiny3d", "--model.net.decoder_channels", "[16, 8, 8]"]
DATA = ["--data.tiles.tile_size", "32", "--data.window.z_start", "4", "--data.window.z_end", "16"]
FAST = ["--data.loader.num_workers", "0", "--data.tiles.samples_per_epoch", "32", "--max_epochs", "1"]
# Thresholds a barely trained teacher passes: most pixels are trusted, so round 1 has pseudo-labelled tiles.
RULE = ["--high", "0.5", "--low", "0.495", "--background", "0.49", "--min_area", "1"]


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file but the documented cache: (size, modification time)."""
    return {
        str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in folder.rglob("*")
        if p.is_file() and ".ink_cache" not in p.parts
    }


def test_two_rounds_keep_their_own_folders_and_never_touch_the_sources(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, capsys
) -> None:
    monkeypatch.chdir(tmp_path)
    common = {"depth": 20, "layers_dirname": "layers", "map_layout": "segment"}
    for fid, seed in (("10", 0), ("11", 1)):
        make_fragment(tmp_path / "labelled" / fid, 96, 96, seed=seed, label_style="grey", **common)
    for fid, seed in (("20", 2), ("21", 3)):
        make_fragment(tmp_path / "unlabelled" / fid, 96, 96, seed=seed, with_labels=False, **common)
    before = {name: snapshot(tmp_path / name) for name in ("labelled", "unlabelled")}
    fit = ["--data.data_dir", "labelled", "--data.splits.train_fragments=[10]", "--data.splits.val_fragments=[11]"]
    fit += ["--data.splits.test_fragments=[11]", *TINY, *DATA, *FAST, "--disable_callbacks", "[cam, eval_images]"]
    argv = ["--rounds", "1", "--segments", "unlabelled", "--work_dir", "rounds", *RULE, *fit]
    argv += ["--predict_args", "--data.loader.num_workers 0"]

    with caplog.at_level(logging.INFO):
        rows = label_rounds_main(argv)

    assert [row["round"] for row in rows] == [0, 1]
    work = (tmp_path / "rounds").resolve()
    for r in (0, 1):
        assert json.loads((work / f"round_{r}" / "scores.json").read_text())["round"] == r
        assert 0.0 <= rows[r]["test"]["test/f05"] <= 1.0
    # Round 0's labels: the rule and the checkpoint they came from, recorded beside them.
    record = json.loads((work / "round_0" / "labels" / "pseudo_labels.json").read_text())
    assert record["rule"] == {"high": 0.5, "low": 0.495, "background": 0.49, "min_area": 1}
    checkpoint = Path(rows[0]["checkpoint"])
    assert record["teacher_threshold"] == load_checkpoint(checkpoint)["val_threshold"]  # what "auto" would use
    assert record["teacher_weights"] == "weights" and rows[0]["rule"] == record["rule"]
    assert record["checkpoint"] == str(checkpoint)
    assert record["checkpoint_sha256"] == hashlib.sha256(checkpoint.read_bytes()).hexdigest()
    assert set(record["segments"]) == {"20", "21"}
    manifest = yaml.safe_load((work / "round_0" / "labels" / "pseudo_labels.yaml").read_text())
    volumes = {entry["id"]: Path(entry["volume"]) for entry in manifest["fragments"]}
    assert volumes == {fid: (tmp_path / "unlabelled" / fid / "layers").resolve() for fid in ("20", "21")}
    # Round 1 trained on them, from round 0's weights; its config says so and can be replayed.
    config = yaml.safe_load((Path(rows[1]["run"]) / "config.yaml").read_text())
    assert Path(config["data"]["pseudo"]["folder"]) == work / "round_0" / "labels"
    assert config["model"]["init_weights"] == str(checkpoint)
    used = [r.getMessage() for r in caplog.records if r.getMessage().startswith("pseudo-labels: 2 segment(s)")]
    assert used and " 0 of " not in used[0]
    assert rows[1]["trained_on"].endswith("pseudo_labels.yaml") and rows[1]["start"] == "previous"
    table = (work / "rounds.md").read_text()
    assert "| 1 | previous | labelled + round 0 labels |" in table and table in capsys.readouterr().out
    # Sources untouched: no file written into the data folders except the documented cache.
    assert {name: snapshot(tmp_path / name) for name in before} == before

    # The same command again finds both rounds done and trains nothing.
    runs = sorted(str(p) for p in work.glob("round_*/fit/**/config.yaml"))
    assert label_rounds_main(argv) == rows
    assert sorted(str(p) for p in work.glob("round_*/fit/**/config.yaml")) == runs

    # A label set is never written into the segments it labels.
    with pytest.raises(ValueError, match="lies inside"):
        pseudo_label_main(["--ckpt_path", str(checkpoint), "--segments", "unlabelled", "--output", "unlabelled/x"])

    # Round 1 resumed from its own last.ckpt needs neither round 0's checkpoint nor its weights.
    checkpoint.unlink()
    resumed = cli_main(
        ["fit", "--config", str(Path(rows[1]["run"]) / "config.yaml"), "--ckpt_path", "last", "--max_epochs", "2"]
    )
    assert resumed.trainer.current_epoch == 2 and resumed.model.init_weights is None
