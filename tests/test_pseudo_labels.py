"""Pseudo-labels: label sets written from a teacher's map, trained beside real labels with less weight."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
import yaml

from datamodules import InkDataModule, PseudoConfig
from datamodules.pseudo import (
    BACKGROUND_CEILING,
    LABEL_SET_MANIFEST,
    PseudoLabelRule,
    hysteresis,
    label_set_manifest,
    write_label_set,
    write_segment_labels,
)
from datamodules.reading.fragment import Fragment
from datamodules.reading.layouts import FragmentSources, find_sources
from datamodules.reading.map_reader import MapReader
from datamodules.samplers import BalancedTileSampler
from datamodules.synthetic.fragments import make_fragment
from modules.components.ink_net import NetConfig
from modules.ink_module import InkModule, load_net_weights
from modules.losses import InkLoss, LossConfig
from utils.pyramid import write_tiff_pyramid

pytestmark = pytest.mark.usefixtures("one_thread")

SIZE = 64


def teacher_map() -> np.ndarray:
    """Probabilities: a seeded blob (ink), an unseeded blob, a tiny seeded blob, a grey zone, clear background."""
    prob = np.full((SIZE, SIZE), 0.02, dtype=np.float32)
    prob[4:20, 4:20] = 0.6
    prob[10, 10] = 0.95  # the seed: the whole 16 x 16 blob is ink
    prob[30:40, 4:14] = 0.6  # no seed: untrusted
    prob[50:52, 50:52] = 0.95  # seeded but 4 px < min_area: untrusted
    prob[40:60, 20:40] = 0.35  # between background and low: untrusted
    return prob


def write_teacher(path: Path, prob: np.ndarray) -> Path:
    levels = np.rint(prob * 255).astype(np.uint8)
    write_tiff_pyramid(path, levels, path.parent)
    return path


@pytest.fixture
def segment(tmp_path: Path) -> Path:
    return make_fragment(tmp_path / "segments" / "20230530164535", SIZE, SIZE, depth=12, seed=3, with_labels=False)


def test_label_set_maps_follow_hysteresis_and_mark_the_rest_untrusted(tmp_path: Path, segment: Path) -> None:
    prob = teacher_map()
    teacher = write_teacher(tmp_path / "teacher.tif", prob)
    rule = PseudoLabelRule(high=0.8, low=0.5, background=0.2, min_area=8)
    out = tmp_path / "labels"
    sources = find_sources(segment)
    maps, counts = write_segment_labels(sources, (SIZE, SIZE), teacher, out, rule, band_rows=5)
    labels = tifffile.imread(out / maps["inklabels"])
    trusted = tifffile.imread(out / maps["supervision"]) > 0
    ink = labels >= 128
    expected = hysteresis(np.rint(prob * 255) / 255, rule.hysteresis)
    assert ink[4:20, 4:20].all() and ink.sum() == 256
    np.testing.assert_array_equal(ink & trusted, expected)
    assert not trusted[30:40, 4:14].any() and not trusted[50:52, 50:52].any() and not trusted[40:60, 20:40].any()
    assert trusted[0, 0] and labels[0, 0] == round(0.02 * 255)  # background keeps the teacher's probability
    assert labels[10, 10] == round(0.95 * 255) and labels[5, 5] == 153  # ink keeps it too (>= 128)
    mask = np.asarray(Fragment(segment, z_start=0, z_end=1).mask)
    assert counts.papyrus == mask.sum()
    assert counts.ink == (ink & mask).sum() and counts.ink + counts.background + counts.untrusted == counts.papyrus


def test_label_set_manifest_points_at_the_original_volume_and_never_writes_there(
    tmp_path: Path, segment: Path
) -> None:
    before = {p: p.stat().st_mtime_ns for p in segment.rglob("*") if p.is_file()}
    teacher = write_teacher(tmp_path / "teacher.tif", teacher_map())
    out = tmp_path / "labels"
    sources = find_sources(segment)
    maps, counts = write_segment_labels(sources, (SIZE, SIZE), teacher, out, PseudoLabelRule(min_area=8).resolved(None))
    manifest = write_label_set(out, [(sources, maps, counts)], {"checkpoint": "x.ckpt"})
    entry = yaml.safe_load(manifest.read_text())["fragments"][0]
    assert entry["id"] == sources.id and Path(entry["volume"]) == sources.volume.resolve()
    assert Path(entry["mask"]) == sources.maps["mask"].resolve()
    assert label_set_manifest(out) == manifest == label_set_manifest(manifest)
    after = {p: p.stat().st_mtime_ns for p in segment.rglob("*") if p.is_file()}
    assert after == before  # nothing written into, or changed in, the segment
    assert not list(out.glob("**/*.tmp*"))


def test_label_set_manifest_missing_is_named(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=f"no {LABEL_SET_MANIFEST}"):
        label_set_manifest(tmp_path)


def test_rule_thresholds_follow_the_teachers_validation_threshold_unless_given() -> None:
    auto = PseudoLabelRule().resolved(0.82)
    assert (auto.low, auto.high, auto.background) == (0.82, 0.91, BACKGROUND_CEILING)  # background: confident only
    assert PseudoLabelRule().resolved(0.06).background == 0.03  # below low / 2 when that is lower: still ordered
    assert PseudoLabelRule().resolved(None).low == 0.5  # a teacher never validated: 0.5
    given = PseudoLabelRule(high=0.7, background=0.1).resolved(0.6)
    assert (given.low, given.high, given.background) == (0.6, 0.7, 0.1)
    with pytest.raises(ValueError, match="not resolved"):
        _ = PseudoLabelRule().hysteresis
    with pytest.raises(ValueError, match="background < low <= high"):
        PseudoLabelRule(high=0.7).resolved(0.8)


def test_rule_thresholds_are_checked() -> None:
    with pytest.raises(ValueError, match="background < low <= high"):
        PseudoLabelRule(high=0.8, low=0.5, background=0.6)
    with pytest.raises(ValueError, match="min_area"):
        PseudoLabelRule(min_area=-1)
    with pytest.raises(ValueError, match="pseudo.weight"):
        PseudoConfig(weight=0.0)
    with pytest.raises(ValueError, match="pseudo.share"):
        PseudoConfig(share=1.5)


def labelled_and_pseudo(tmp_path: Path) -> tuple[Path, Path]:
    """A labelled folder (train + validation fragments) and a label set of one unlabelled segment."""
    data = tmp_path / "labelled"
    make_fragment(data / "a", SIZE, SIZE, depth=12, seed=1)
    make_fragment(data / "b", SIZE, SIZE, depth=12, seed=2)
    segment = make_fragment(tmp_path / "unlabelled" / "u", SIZE, SIZE, depth=12, seed=3, with_labels=False)
    teacher = write_teacher(tmp_path / "teacher.tif", teacher_map())
    out = tmp_path / "labels"
    sources = find_sources(segment)
    maps, counts = write_segment_labels(sources, (SIZE, SIZE), teacher, out, PseudoLabelRule(min_area=8).resolved(None))
    write_label_set(out, [(sources, maps, counts)], {})
    return data, out


def datamodule(data: Path, **pseudo: object) -> InkDataModule:
    return InkDataModule(
        str(data),
        splits={"train_fragments": ["a"], "val_fragments": ["b"]},
        window={"z_start": 2, "z_end": 8},
        tiles={"tile_size": 16, "stride": 8, "min_valid_fraction": 0.0, "jitter": False, "samples_per_epoch": 64},
        loader={"batch_size": 64, "num_workers": 0},
        pseudo=pseudo,
    )


def test_pseudo_segments_train_only_with_their_weight_and_untrusted_pixels_out(tmp_path: Path) -> None:
    data, labels = labelled_and_pseudo(tmp_path)
    dm = datamodule(data, folder=str(labels), weight=0.25, share=0.5)
    dm.setup("fit")
    ids = [f.id for f in dm.fragments("train")]
    assert ids == ["a", "b", "u"]
    assert set(dm.fragment_shapes("validate")) == {"b"}  # validation: real labels only
    train = dm.tiles("train")
    assert {ids[i] for i in train.windows[:, 0]} == {"a", "u"}
    dataset = dm._dataset("train", training=False)
    dataset.loss_weights = [1.0, 1.0, 0.25]
    untrusted = ~np.asarray(dm.fragments("train")[2].supervision)
    assert untrusted[30:40, 4:14].all()
    for index in range(len(dataset)):
        item = dataset[index]
        fid, (y, x) = item["fragment"], item["yx"].tolist()
        assert float(item["weight"]) == (0.25 if fid == "u" else 1.0)
        if fid == "u":
            valid = item["valid"][0].numpy() > 0
            assert not (valid & untrusted[y : y + 16, x : x + 16]).any()


def test_untrusted_pixels_carry_no_gradient_and_weights_scale_the_loss() -> None:
    torch.manual_seed(0)
    logits = torch.randn(2, 1, 8, 8, requires_grad=True)
    label = (torch.rand(2, 1, 8, 8) > 0.5).float()
    valid = torch.ones(2, 1, 8, 8)
    valid[1, :, :4] = 0  # untrusted pixels of a pseudo-labelled tile
    loss = InkLoss(LossConfig(bce_weight=0.5, dice_weight=0.5))
    loss(logits, label, valid, torch.tensor([1.0, 0.5])).backward()
    assert (logits.grad[1, :, :4] == 0).all() and (logits.grad[1, :, 4:] != 0).any()
    bce = InkLoss(LossConfig(bce_weight=1.0, dice_weight=0.0))
    one = bce(logits, label, valid, torch.tensor([0.5, 0.5]))
    assert torch.allclose(one, 0.5 * bce(logits, label, valid))  # absolute, not renormalised
    mixed = bce(logits, label, valid, torch.tensor([1.0, 0.0]))
    assert torch.allclose(mixed * valid.sum(), bce(logits[:1], label[:1], valid[:1]) * valid[0].sum())


def test_training_batches_carry_weights_and_the_share_of_pseudo_tiles(tmp_path: Path) -> None:
    data, labels = labelled_and_pseudo(tmp_path)
    dm = datamodule(data, folder=str(labels), weight=0.5, share=0.25)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    pseudo = np.array([f == "u" for f in batch["fragment"]])
    assert torch.equal(batch["weight"], torch.tensor(np.where(pseudo, 0.5, 1.0), dtype=torch.float32))
    sampler = BalancedTileSampler(
        dm._dataset("train", training=True), 4000, None, pseudo=dm.tiles("train").windows[:, 0] == 2, pseudo_share=0.25
    )
    drawn = dm.tiles("train").windows[list(sampler), 0] == 2
    assert abs(drawn.mean() - 0.25) < 0.03


def test_soft_pseudo_labels_are_the_teachers_probabilities_real_labels_stay_binary(tmp_path: Path) -> None:
    data, labels = labelled_and_pseudo(tmp_path)
    dm = datamodule(data, folder=str(labels), soft=True)
    dm.setup("fit")
    dataset = dm._dataset("train", training=True)
    dataset.random = False
    values = {"a": set(), "u": set()}
    for index in range(len(dataset)):
        item = dataset[index]
        valid = item["valid"][0] > 0
        values[item["fragment"]] |= set(np.rint(item["label"][0][valid].numpy() * 255).astype(int).tolist())
    assert values["a"] <= {0, 255}
    assert {153, 5} <= values["u"]  # teacher levels of ink (0.6) and background (0.02)


def test_a_pseudo_labelled_segment_in_a_real_split_is_refused(tmp_path: Path) -> None:
    data, labels = labelled_and_pseudo(tmp_path)
    make_fragment(data / "u", SIZE, SIZE, depth=12, seed=4)
    dm = InkDataModule(
        str(data),
        splits={"train_fragments": ["a"], "val_fragments": ["u"]},
        window={"z_start": 2, "z_end": 8},
        tiles={"tile_size": 16},
        loader={"num_workers": 0},
        pseudo={"folder": str(labels)},
    )
    with pytest.raises(ValueError, match=r"pseudo-labels of \['u'\], which the val split uses"):
        dm.setup("fit")


def test_init_weights_load_the_net_and_a_mismatch_is_named(tmp_path: Path) -> None:
    net = NetConfig(encoder="tiny3d", decoder_channels=[16, 8, 8])
    teacher = InkModule(num_slices=6, net=net)
    path = tmp_path / "teacher.ckpt"
    torch.save({"state_dict": teacher.state_dict()}, path)
    student = InkModule(num_slices=6, net=net, init_weights=str(path))
    student.setup("fit")
    for key, value in teacher.net.state_dict().items():
        assert torch.equal(student.net.state_dict()[key], value)
    other = InkModule(num_slices=6, net=NetConfig(encoder="tiny3d", decoder_channels=[8, 8, 8]))
    with pytest.raises(ValueError, match="init_weights .*teacher.ckpt.*do not fit"):
        load_net_weights(other.net, str(path))


def test_a_large_teacher_map_is_labelled_in_bounded_memory(tmp_path: Path) -> None:
    """8192 x 4096 = 33.6 Mpx (128 MiB as float32): labels are decided and written a band of rows at a time."""
    height, width, tile = 8192, 4096, 512

    def tiles():  # vertical strokes crossing every band, seeded only near the top; background elsewhere
        for y in range(0, height, tile):
            for x in range(0, width, tile):
                xx = np.arange(x, x + tile)[None, :].repeat(tile, 0)
                yy = np.arange(y, y + tile)[:, None].repeat(tile, 1)
                stroke = (xx % 256) < 8
                yield np.where(stroke, np.where(yy < 16, 250, 180), 10).astype(np.uint8)

    teacher = tmp_path / "teacher.tif"
    tifffile.imwrite(teacher, tiles(), shape=(height, width), dtype=np.uint8, tile=(tile, tile), compression="zlib")
    sources = FragmentSources(id="big", path=tmp_path, volume=tmp_path / "layers")
    rule = PseudoLabelRule(min_area=64).resolved(0.6)  # low 0.6 (153), high 0.8 (204), background 0.05 (12)
    tracemalloc.start()
    try:
        maps, counts = write_segment_labels(sources, (height, width), teacher, tmp_path / "labels", rule)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # A whole-map float32 copy alone would be 128 MiB; bands of about 1 Mpx peaked at 41 MiB when measured.
    assert peak < 64 * 2**20, f"peak {peak / 2**20:.0f} MiB for a {height * width / 1e6:.0f} Mpx map"
    assert counts.ink == height * 8 * (width // 256)  # every stroke grew from its seeds through all bands
    assert counts.untrusted == 0 and counts.papyrus == height * width
    with MapReader(tmp_path / "labels" / maps["supervision"], (height, width), "supervision") as reader:
        assert reader.rows(height - 1, height).min() == 255
