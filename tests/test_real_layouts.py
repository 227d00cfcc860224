"""Segments as published, end to end: numeric ids typed unquoted, grey labels (PNG and TIFF), the monorepo's masks.

``fit`` / ``test`` / ``predict`` run through `cli_main` exactly as a user types them, on segment folders in the Grand
Prize layout (``layers/``, ``<id>_mask.png``, ``<id>_inklabels.png`` / ``.tiff``), and the data module honours
supervision and validation masks.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from datamodules.ink_datamodule import InkDataModule
from datamodules.reading.fragment import Fragment
from datamodules.reading.layouts import fragment_ids
from datamodules.synthetic import make_fragment
from datamodules.tiling import SCOPE_INSIDE, SCOPE_OUTSIDE
from lightning_app.cli import InkArgumentParser, InkCLI, cli_main
from modules.ink_module import InkModule
from utils.checkpoints import load_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")

TRAIN, HELD = "20230530164535", "20231106155351"
TINY = ["--model.net.encoder", "tiny3d", "--model.net.decoder_channels", "[16, 8, 8]"]
DATA = ["--data.tile_size", "32", "--data.z_start", "4", "--data.z_end", "16", "--data.num_workers", "0"]


def grand_prize_segments(folder: Path) -> Path:
    """Two segments in the Grand Prize layout: anti-aliased grey labels, one as PNG, one as a tiled TIFF."""
    for fid, suffix, seed in ((TRAIN, ".png", 0), (HELD, ".tiff", 1)):
        common = {"depth": 20, "seed": seed, "layers_dirname": "layers", "map_layout": "segment"}
        make_fragment(folder / fid, 96, 96, label_style="grey", label_suffix=suffix, **common)
    return folder


def test_fit_test_predict_on_grand_prize_segments_with_unquoted_ids(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    data = grand_prize_segments(tmp_path / "segments")
    before = sorted(str(p.relative_to(data)) for p in data.rglob("*") if ".ink_cache" not in p.parts)
    splits = [f"--data.train_fragments=[{TRAIN}]", f"--data.val_fragments=[{HELD}]", f"--data.test_fragments=[{HELD}]"]
    fit = cli_main(
        ["fit", "--data.data_dir", str(data), *TINY, *DATA, *splits, "--data.samples_per_epoch", "16"]
        + ["--max_epochs", "1", "--disable_callbacks", "[cam, eval_images]", "--trainer.default_root_dir", "runs"]
    )
    datamodule = fit.datamodule
    assert datamodule.settings.splits.train_fragments == [TRAIN] and datamodule.settings.splits.test_fragments == [HELD]
    assert {f.id for f in datamodule.fragments("train")} == {TRAIN, HELD}
    assert fit.trainer.callback_metrics["test/f05"] >= 0.0
    saved = yaml.safe_load((Path(fit.trainer.log_dir) / "config.yaml").read_text())
    assert saved["data"]["splits"]["train_fragments"] == [TRAIN]  # the replayable config holds the id as a string
    best = Path(fit.trainer.checkpoint_callback.best_model_path)
    saved_splits = load_checkpoint(best)["datamodule_hyper_parameters"]["splits"]
    assert saved_splits["train_fragments"] == [TRAIN]  # strings stored

    test = cli_main(["test", "--ckpt_path", str(best), "--trainer.default_root_dir", "runs"])
    assert set(test.datamodule.fragment_shapes("test")) == {HELD}
    out = tmp_path / "pred"
    cli_main(
        ["predict", "--ckpt_path", str(best), f"--data.predict_fragments=[{HELD}]"]
        + ["--prediction_writer.output_dir", str(out), "--trainer.default_root_dir", "runs"]
    )
    predicted = np.asarray(Image.open(out / f"{HELD}_mask.png")) > 0
    papyrus = np.asarray(Image.open(data / HELD / f"{HELD}_mask.png")) > 0
    assert (out / f"{HELD}_prediction.tif").is_file()
    assert not (predicted & ~papyrus).any()  # no ink predicted outside the segment's mask
    after = sorted(str(p.relative_to(data)) for p in data.rglob("*") if ".ink_cache" not in p.parts)
    assert after == before  # nothing but the cache written into the data


def test_numeric_ids_in_a_yaml_config_are_strings(tmp_path: Path) -> None:
    data = grand_prize_segments(tmp_path / "segments")
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"data": {"data_dir": str(data), "splits": {"train_fragments": [int(TRAIN)]}}}))
    cli = InkCLI(
        InkModule,
        InkDataModule,
        args=["--config", str(config), *TINY, f"--data.splits.val_fragments=[{HELD}]", "--trainer.logger", "false"],
        parser_class=InkArgumentParser,
        run=False,
        auto_configure_optimizers=False,
    )
    splits = cli.datamodule.settings.splits
    assert splits.train_fragments == [TRAIN] and splits.val_fragments == [HELD]
    assert fragment_ids([20230530164535, "frag1"]) == [TRAIN, "frag1"]
    with pytest.raises(ValueError, match=r"fragment id 2\.5 must be a string or an integer"):
        fragment_ids([2.5])
    datamodule = InkDataModule(data_dir=str(data), train_fragments=[int(TRAIN)], val_fragments=[int(HELD)])
    splits = datamodule.settings.splits
    assert splits.train_fragments == [TRAIN] and splits.val_fragments == [HELD]


def test_supervision_and_validation_masks_decide_what_trains_and_what_validates(tmp_path: Path, caplog) -> None:
    data = tmp_path / "mono"
    make_fragment(data / TRAIN, 128, 96, depth=20, layers_dirname="layers", map_layout="monorepo", label_style="grey")
    fragment = Fragment(data / TRAIN, z_start=4, z_end=16)
    settings = {"tile_size": 32, "z_start": 4, "z_end": 16, "num_workers": 0, "min_valid_fraction": 0.25}
    datamodule = InkDataModule(data_dir=str(data), **settings, eval_stride=16)
    with caplog.at_level(logging.INFO):
        datamodule.setup("fit")
    assert f"fragment '{TRAIN}': inklabels: {TRAIN}_inklabels_v2.png (newest of v1, v2)" in caplog.text
    train, val = datamodule.tiles("train"), datamodule.tiles("val")
    assert set(train.scope.tolist()) == {SCOPE_OUTSIDE} and set(val.scope.tolist()) == {SCOPE_INSIDE}
    validation, supervision = np.asarray(fragment.validation), np.asarray(fragment.supervision)
    for _, y, x in val.windows:  # every validation window touches the validation mask
        assert validation[y : y + 32, x : x + 32].any()
    scored = np.zeros_like(validation)
    loader = datamodule.val_dataloader()
    for batch in loader:
        for (y, x), valid in zip(batch["yx"].tolist(), batch["valid"][:, 0].numpy()):
            scored[y : y + 32, x : x + 32] |= valid > 0
    assert not (scored & ~validation).any() and not (scored & ~supervision).any()  # scored inside both, only
    np.testing.assert_array_equal(scored, validation & supervision & np.asarray(fragment.mask))
    datamodule.setup("predict")  # prediction covers the whole papyrus, supervised or not
    predicted = np.zeros_like(validation)
    for batch in datamodule.predict_dataloader():
        for (y, x), valid in zip(batch["yx"].tolist(), batch["valid"][:, 0].numpy()):
            predicted[y : y + 32, x : x + 32] |= valid > 0
    np.testing.assert_array_equal(predicted, np.asarray(fragment.mask))
    dataset = datamodule._dataset("train", training=False)
    for index in range(len(dataset)):
        item = dataset[index]
        y, x = item["yx"].tolist()
        valid = item["valid"][0].numpy() > 0
        assert not (valid & validation[y : y + 32, x : x + 32]).any()  # validation pixels never train
        assert not (valid & ~supervision[y : y + 32, x : x + 32]).any()  # unsupervised pixels never count
