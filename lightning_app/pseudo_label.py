"""Pseudo-labels from a checkpoint: predict segments, keep what the teacher is sure of, write a label set.

``python scripts/pseudo_label.py --ckpt_path best.ckpt --segments data/unlabelled --output labels/round1``

1. The segments (a folder in any layout the project reads, or a manifest) are predicted from the checkpoint with
   the project's band-by-band prediction (`callbacks.prediction_writer`), into ``<output>/teacher``. Options the
   script does not know (``--trainer.accelerator gpu``, ``--model.eval.tta true``, ``--data.loader.batch_size 8``)
   go to that prediction unchanged.
2. Each segment's probabilities become labels and trusted pixels (`datamodules.pseudo.label_set`), band by band.
3. The manifest and the record (rule, checkpoint, whether its weights are an EMA, pixel counts) are written last,
   so a label set that has a manifest is complete.

Nothing is written into the segments' folders except the documented ``.ink_cache`` prediction uses; the output
folder may not lie inside them.
"""

from __future__ import annotations

import argparse
import hashlib
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import tifffile

from datamodules.pseudo.label_set import (
    PseudoLabelRule,
    SegmentCounts,
    write_label_set,
    write_segment_labels,
)
from datamodules.reading.layouts import discover_sources, fragment_ids, is_manifest
from utils.checkpoints import load_checkpoint

__all__ = ["LabelSet", "id_list", "parse_pseudo_label_args", "pseudo_label", "pseudo_label_main"]

TEACHER_DIR = "teacher"


@dataclass(frozen=True)
class LabelSet:
    """A written label set: its folder, manifest, the rule applied (thresholds resolved) and each segment's counts."""

    folder: Path
    manifest: Path
    counts: dict[str, SegmentCounts]
    rule: dict

    def table(self) -> str:
        """One line per segment: the shares of its papyrus that are ink, background and untrusted."""
        lines = [f"{'segment':<20} {'papyrus px':>12} {'ink':>7} {'background':>11} {'untrusted':>10}"]
        for fid, c in self.counts.items():
            n = max(1, c.papyrus)
            lines.append(
                f"{fid:<20} {c.papyrus:>12,} {c.ink / n:>7.1%} {c.background / n:>11.1%} {c.untrusted / n:>10.1%}"
            )
        return "\n".join(lines)


def parse_pseudo_label_args(argv: Sequence[str]) -> tuple[argparse.Namespace, list[str]]:
    """The script's own options, and the rest (passed to the prediction)."""
    parser = argparse.ArgumentParser(
        prog="pseudo_label.py",
        description="Predict segments from a checkpoint and write pseudo-labels (a label set) into --output.",
        epilog="Other options (--trainer.*, --model.eval.*, --data.loader.*, --data.window.*) go to the prediction.",
    )
    parser.add_argument("--ckpt_path", required=True, help="the teacher: a checkpoint of this project")
    parser.add_argument("--segments", required=True, help="folder of segments (any layout) or a manifest")
    parser.add_argument("--output", required=True, help="the label set's folder (not inside the segments)")
    parser.add_argument("--fragments", default=None, help="segment ids to label, e.g. [20230530164535,2023...]")
    add_rule_args(parser)
    parser.add_argument("--band_rows", type=int, default=None, help="rows decided at a time; default ~1 Mpx a band")
    return parser.parse_known_args(list(argv))


def add_rule_args(parser: argparse.ArgumentParser) -> None:
    """``--high``, ``--low``, ``--background``, ``--min_area``: the trust rule (`PseudoLabelRule`)."""
    helps = {
        "--low": "ink grows through p >= low; default: the teacher's validation threshold (0.5 without one)",
        "--high": "ink components need a seed p >= high; default: halfway from --low to 1",
        "--background": "trusted background: p <= this outside ink; default: 0.05 (half of --low if lower)",
    }
    for flag, text in helps.items():
        parser.add_argument(flag, type=float, default=None, help=text)
    parser.add_argument("--min_area", type=int, default=PseudoLabelRule.min_area, help="smaller ink: untrusted")


def rule_from_args(args: argparse.Namespace) -> PseudoLabelRule:
    """The rule the options give (thresholds not given are set from the teacher later)."""
    return PseudoLabelRule(high=args.high, low=args.low, background=args.background, min_area=args.min_area)


def pseudo_label_main(argv: Sequence[str]) -> LabelSet:
    """Runs the script with ``argv`` (its options and the prediction's); prints and returns the label set."""
    args, rest = parse_pseudo_label_args(argv)
    rule = rule_from_args(args)
    names = fragment_ids(id_list(args.fragments))
    label_set = pseudo_label(args.ckpt_path, args.segments, args.output, rule, names, rest, band_rows=args.band_rows)
    print(f"label set: {label_set.manifest} (rule: {label_set.rule})\n{label_set.table()}")
    return label_set


def pseudo_label(
    ckpt_path: str | Path,
    segments: str | Path,
    output: str | Path,
    rule: PseudoLabelRule,
    fragments: Sequence[str] | None = None,
    predict_args: Sequence[str] = (),
    *,
    band_rows: int | None = None,
) -> LabelSet:
    """Predicts ``segments`` from ``ckpt_path`` and writes their label set into ``output``.

    The rule's thresholds not given are set from the teacher's validation threshold (`PseudoLabelRule.resolved`).

    Raises:
        ValueError / FileNotFoundError: the output inside the segments, unknown segment ids, a missing checkpoint.
    """
    from lightning_app.cli import cli_main  # Lightning only when predicting

    ckpt, out = Path(ckpt_path), Path(output)
    if not ckpt.is_file():
        raise FileNotFoundError(f"--ckpt_path '{ckpt}' does not exist")
    sources = discover_sources(segments)
    if fragments is not None:
        known = {s.id for s in sources}
        missing = sorted(set(fragments) - known)
        if missing:
            raise ValueError(f"--fragments names segment(s) {missing} not in '{segments}'; found {sorted(known)}")
        sources = [s for s in sources if s.id in set(fragments)]
    _check_output(out, Path(segments), sources)
    checkpoint = load_checkpoint(ckpt, what="--ckpt_path")
    threshold = checkpoint.get("val_threshold") if isinstance(checkpoint, dict) else None
    teacher_weights = "ema" if isinstance(checkpoint, dict) and "current_model_state" in checkpoint else "weights"
    del checkpoint
    given, rule = rule, rule.resolved(threshold)
    out.mkdir(parents=True, exist_ok=True)
    teacher = out / TEACHER_DIR
    started = time.time()
    selection = ["--data.splits.predict_fragments", f"[{','.join(s.id for s in sources)}]"] if fragments else []
    cli_main(
        [
            "predict",
            "--ckpt_path",
            str(ckpt),
            "--data.splits.predict_dir",
            str(segments),
            *selection,
            "--prediction_writer.output_dir",
            str(teacher),
            "--prediction_writer.formats",
            "[tiff]",
            "--trainer.default_root_dir",
            str(out / "predict_run"),
            *predict_args,
        ]
    )
    entries = []
    for source in sources:
        probabilities = teacher / f"{source.id}_prediction.tif"
        with tifffile.TiffFile(probabilities) as tif:
            shape = tuple(int(s) for s in tif.pages.first.shape[:2])
        maps, counts = write_segment_labels(source, shape, probabilities, out, rule, band_rows)
        entries.append((source, maps, counts))
    record = {
        "checkpoint": str(ckpt.resolve()),
        "checkpoint_sha256": _sha256(ckpt),
        "teacher_weights": teacher_weights,
        "teacher_threshold": threshold,
        "rule": asdict(rule),
        "rule_given": asdict(given),
        "segments_from": str(Path(segments).resolve()),
        "predict_args": list(predict_args),
        "seconds": round(time.time() - started, 1),
    }
    manifest = write_label_set(out, entries, record)
    return LabelSet(out, manifest, {source.id: counts for source, _, counts in entries}, asdict(rule))


def _check_output(out: Path, segments: Path, sources: Sequence) -> None:
    """The label set may not be written into the data it labels (nor hold it)."""
    target = out.resolve()
    roots = [] if is_manifest(segments) else [segments.resolve()]  # a manifest's own folder is not the data
    roots += [s.path.resolve() for s in sources] + [s.volume.resolve() for s in sources]
    for root in roots:
        if target == root or root in target.parents:
            raise ValueError(
                f"--output '{out}' lies inside '{root}', the segments it labels: write label sets elsewhere "
                "(source data is never written to)"
            )
        if target in root.parents:
            raise ValueError(f"--output '{out}' holds the segments it labels ('{root}'): choose a folder of its own")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def id_list(value: str | None) -> list[str] | None:
    """Segment ids given on the command line as ``[a,b]``, ``a,b`` or ``a``, as strings (None: all)."""
    if value is None:
        return None
    items = [v.strip().strip("'\"") for v in value.strip().strip("[]").split(",")]
    return [v for v in items if v]
