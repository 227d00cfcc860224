"""The label-round benchmark's grading and its oracle label set (the true labels in a label set's place)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
import yaml
from PIL import Image

from benchmarks.pseudo_rounds import grade_label_set, oracle_label_set, summarise
from datamodules.pseudo import PseudoLabelRule, write_label_set, write_segment_labels
from datamodules.reading.layouts import find_sources
from datamodules.synthetic.fragments import make_fragment
from utils.pyramid import write_tiff_pyramid

SIZE = 48


def label_set_and_truth(tmp_path: Path) -> tuple[Path, Path]:
    """A label set of one segment from a teacher that sees one of two true strokes, and the hidden truth."""
    segment = make_fragment(tmp_path / "segments" / "s1", SIZE, SIZE, depth=8, seed=1, with_labels=False)
    true = np.zeros((SIZE, SIZE), dtype=bool)
    true[8:20, 8:20] = True  # seen
    true[30:40, 30:40] = True  # missed: the teacher is confident it is background
    prob = np.full((SIZE, SIZE), 0.02, dtype=np.float32)
    prob[8:20, 8:20] = 0.9
    teacher = tmp_path / "teacher.tif"
    write_tiff_pyramid(teacher, np.rint(prob * 255).astype(np.uint8), tmp_path)
    sources = find_sources(segment)
    out = tmp_path / "labels"
    maps, counts = write_segment_labels(sources, (SIZE, SIZE), teacher, out, PseudoLabelRule(min_area=8).resolved(0.5))
    write_label_set(out, [(sources, maps, counts)], {})
    truth = tmp_path / "truth"
    truth.mkdir()
    Image.fromarray(np.where(true, 255, 0).astype(np.uint8)).save(truth / "s1.png")
    return out, truth


def test_grading_counts_the_missed_stroke_as_ink_trusted_as_background(tmp_path: Path) -> None:
    labels, truth = label_set_and_truth(tmp_path)
    graded = grade_label_set(labels, truth)
    entry = yaml.safe_load((labels / "pseudo_labels.yaml").read_text())["fragments"][0]
    papyrus = np.asarray(Image.open(entry["mask"])) > 0  # graded inside the papyrus only
    seen, missed = papyrus[8:20, 8:20].sum(), papyrus[30:40, 30:40].sum()
    assert graded is not None and seen > 0 and missed > 0
    assert graded["ink_precision"] == pytest.approx(1.0)
    assert graded["ink_recall"] == pytest.approx(seen / (seen + missed))
    assert graded["true_ink_in_background"] == pytest.approx(missed / (seen + missed))
    assert grade_label_set(labels, tmp_path / "no_truth") is None


def test_the_oracle_label_set_is_the_truth_all_trusted_and_leaves_the_source_alone(tmp_path: Path) -> None:
    labels, truth = label_set_and_truth(tmp_path)
    before = {p: p.read_bytes() for p in labels.rglob("*") if p.is_file()}
    oracle = oracle_label_set(labels, truth, tmp_path / "oracle")
    graded = grade_label_set(oracle, truth)
    assert graded == {
        "ink_precision": 1.0,
        "ink_recall": 1.0,
        "true_ink_in_background": 0.0,
        "true_ink_untrusted": 0.0,
    }
    entry = yaml.safe_load((oracle / "pseudo_labels.yaml").read_text())["fragments"][0]
    assert tifffile.imread(oracle / entry["inklabels"])[35, 35] == 255
    assert {p: p.read_bytes() for p in labels.rglob("*") if p.is_file()} == before


def test_summary_reports_the_oracle_only_when_every_seed_has_it() -> None:
    def row(seed: int, matched: float, round1: float, oracle: float | None) -> dict:
        rounds = {
            "round0_f05_val_threshold": 0.7,
            "round1_f05_val_threshold": round1,
            "made": {"ink": 0.1, "background": 0.6, "untrusted": 0.3},
            "graded": None,
        }
        out = {"seed": seed, "matched": {"f05_val_threshold": matched}, "rounds": rounds}
        return out if oracle is None else {**out, "oracle": {"f05_val_threshold": oracle}}

    both = summarise([row(0, 0.8, 0.83, 0.9), row(1, 0.8, 0.79, 0.84)], 60)
    assert "round 1 - compute-matched round 0, test F0.5 at the validation threshold: mean +0.010" in both
    assert "oracle - compute-matched round 0, test F0.5 at the validation threshold: mean +0.070" in both
    assert "| 0 | 0.700 | 0.800 | 0.830 | +0.030 | 0.900 | +0.100 |" in both
    one = summarise([row(0, 0.8, 0.82, 0.9), row(1, 0.8, 0.78, None)], 60)
    assert "oracle" not in one
