"""A label set: pseudo-labels made from a teacher's probabilities, beside (never inside) the segments they label.

``scripts/pseudo_label.py`` writes one per round::

    <label set>/
        pseudo_labels.yaml          the manifest: each segment's original volume, mask and ignore map, with
                                    the labels and trusted pixels below (`datamodules.reading.layouts` reads it)
        pseudo_labels.json          the rule, the checkpoint, and per segment the ink / background / untrusted pixels
        <id>/<id>_inklabels.tif     8-bit: ink 128..255, background 0..127 (the teacher's probability, so a soft
                                    target is there when wanted), 0 where untrusted
        <id>/<id>_supervision_mask.tif   255 where trusted (ink or background), 0 elsewhere: out of the loss
        teacher/<id>_prediction.tif the teacher's probabilities they were made from

Ink is hysteresis (`datamodules.pseudo.hysteresis`): components of ``p >= low`` holding a seed ``p >= high``, at
least ``min_area`` pixels. Background is ``p <= background`` outside ink. Everything else is untrusted. Maps are read
and written band by band (probabilities in, labels through disk-backed scratch files out), so memory stays bounded
on scroll-sized segments.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import yaml

from datamodules.pseudo.hysteresis import Hysteresis, hysteresis_bands
from datamodules.reading.label_rules import LabelConfig
from datamodules.reading.layouts import FragmentSources, is_manifest
from datamodules.reading.map_reader import MapReader
from utils.atomic import atomic_path, atomic_write_text, temporary_sibling
from utils.checks import check_int, check_range
from utils.pyramid import write_tiff_pyramid

__all__ = [
    "BACKGROUND_CEILING",
    "LABEL_SET_MANIFEST",
    "LABEL_SET_RECORD",
    "PSEUDO_LABEL_RULES",
    "PseudoLabelRule",
    "SegmentCounts",
    "label_set_manifest",
    "write_label_set",
    "write_segment_labels",
]

LABEL_SET_MANIFEST = "pseudo_labels.yaml"
LABEL_SET_RECORD = "pseudo_labels.json"
BAND_PIXELS = 1 << 20  # pixels decided at a time: the peak is about 30 bytes per band pixel (measured: 34 MiB)
# Default background: only where the teacher is confident it is not ink. Background is most of the papyrus, so a lax
# threshold buries the teacher's misses (faint ink) in trusted background; see `PseudoLabelRule`.
BACKGROUND_CEILING = 0.05
INK_FLOOR = 128  # ink levels are at least this, background ones below it: threshold 0.5 reads the decision back
# How a label set's labels are read: the hysteresis decision at 0.5; `--data.pseudo.soft` adds soft targets.
PSEUDO_LABEL_RULES = LabelConfig(threshold=0.5, soft=False, unknown=None)


@dataclass(frozen=True)
class PseudoLabelRule:
    """What a teacher's probability must be for a pixel to be trusted.

    A probability means something only against the teacher's calibration (a model trained with Dice often needs a
    threshold of 0.8 where another needs 0.4), so by default the rule is set from the teacher's decision threshold
    ``t``, the one its validation chose on real labels (`resolved`).

    Attributes:
        high: seeds: ink components must hold a pixel at least this probable; None: halfway from ``low`` to 1.
        low: components grow through pixels at least this probable; None: ``t``.
        background: pixels at most this probable (and not ink) are trusted background; None: `BACKGROUND_CEILING`
            (0.05), or ``low / 2`` when that is lower. Not tied to ``t`` like the ink thresholds: background is most
            of the papyrus, and the ink a teacher misses sits at low probabilities whatever its threshold. On the
            project's own family (192² labelled, teacher threshold 0.76), ``p <= low / 2`` (0.38) trusted 88 % of
            the papyrus as background and with it 32 % of the true ink; ``p <= 0.05`` trusted 65 % and 7 %.
        min_area: ink components of fewer pixels are untrusted, not ink.
    """

    high: float | None = None
    low: float | None = None
    background: float | None = None
    min_area: int = 64

    def __post_init__(self) -> None:
        for name in ("high", "low"):
            if getattr(self, name) is not None:
                check_range(f"pseudo-label {name}", getattr(self, name), 0.0, 1.0, low_open=True)
        if self.background is not None:
            check_range("pseudo-label background", self.background, 0.0, 1.0)
        check_int("pseudo-label min_area", self.min_area, minimum=0)
        if None not in (self.high, self.low, self.background) and not self.background < self.low <= self.high:
            raise ValueError(
                f"pseudo-label thresholds background={self.background}, low={self.low}, high={self.high}: need "
                "background < low <= high"
            )

    def resolved(self, teacher_threshold: float | None) -> PseudoLabelRule:
        """The rule with every threshold set, from the teacher's decision threshold (None: 0.5).

        Raises:
            ValueError: the thresholds given and derived are out of order, naming them.
        """
        t = 0.5 if teacher_threshold is None else float(teacher_threshold)
        low = self.low if self.low is not None else t
        high = self.high if self.high is not None else (1.0 + low) / 2.0
        background = self.background if self.background is not None else min(BACKGROUND_CEILING, low / 2.0)
        rounded = {"high": round(high, 6), "low": round(low, 6), "background": round(background, 6)}
        return PseudoLabelRule(**rounded, min_area=self.min_area)

    @property
    def hysteresis(self) -> Hysteresis:
        """The ink rule alone (of a resolved rule)."""
        if self.high is None or self.low is None:
            raise ValueError("pseudo-label rule not resolved: call resolved(teacher_threshold) first")
        return Hysteresis(high=self.high, low=self.low, min_area=self.min_area)


@dataclass(frozen=True)
class SegmentCounts:
    """Pixels of one segment's papyrus by what the label set says of them."""

    papyrus: int
    ink: int
    background: int
    untrusted: int


def label_set_manifest(path: str | Path) -> Path:
    """The manifest of a label set given as its folder or as the manifest itself.

    Raises:
        FileNotFoundError: no label set there, naming the path.
    """
    path = Path(path)
    manifest = path if is_manifest(path) else path / LABEL_SET_MANIFEST
    if not manifest.is_file():
        raise FileNotFoundError(
            f"data.pseudo.folder '{path}': no {LABEL_SET_MANIFEST} there; make a label set with scripts/pseudo_label.py"
        )
    return manifest


def write_segment_labels(
    sources: FragmentSources,
    shape: tuple[int, int],
    teacher: Path,
    out_dir: Path,
    rule: PseudoLabelRule,
    band_rows: int | None = None,
) -> tuple[dict[str, str], SegmentCounts]:
    """Writes one segment's labels and trusted pixels from the teacher's probability map.

    Args:
        sources: the segment's files (its mask counts the papyrus; without one every pixel does).
        shape: ``(H, W)`` of its volume.
        teacher: the teacher's probabilities (a map `MapReader` reads, 8- or 16-bit, or 0/1).
        out_dir: the label set's folder; the maps go to ``<out_dir>/<id>/``.
        rule: the thresholds (resolved: `PseudoLabelRule.resolved`).
        band_rows: rows per band read and decided at a time; default about `BAND_PIXELS` pixels a band.

    Returns:
        The manifest entry's map paths (relative to ``out_dir``) and the pixel counts.
    """
    folder = out_dir / sources.id
    folder.mkdir(parents=True, exist_ok=True)
    band_rows = band_rows or max(16, BAND_PIXELS // max(1, shape[1]))
    names = {
        "inklabels": folder / f"{sources.id}_inklabels.tif",
        "supervision": folder / f"{sources.id}_supervision_mask.tif",
    }
    scratch = {role: temporary_sibling(path) for role, path in names.items()}
    counts = np.zeros(4, dtype=np.int64)  # papyrus, ink, background, untrusted
    try:
        images = {role: np.memmap(scratch[role], dtype=np.uint8, mode="w+", shape=shape) for role in names}
        with MapReader(teacher, shape, "teacher probabilities") as reader:
            mask_reader = MapReader(sources.maps["mask"], shape, "mask") if "mask" in sources.maps else None
            try:
                last: dict[tuple[int, int], np.ndarray] = {}

                def probabilities(start: int, stop: int) -> np.ndarray:
                    # The band just decided is read once more below: keep it (a TIFF re-read restarts decoding).
                    if (start, stop) not in last:
                        last.clear()
                        last[(start, stop)] = reader.rows(start, stop).astype(np.float32) / float(reader.full)
                    return last[(start, stop)]

                for start, stop, ink in hysteresis_bands(probabilities, shape, rule.hysteresis, band_rows):
                    prob = probabilities(start, stop)
                    levels = np.rint(prob * 255.0).astype(np.uint8)
                    background = ~ink & (prob <= float(rule.background))
                    labels = np.zeros_like(levels)
                    labels[ink] = np.maximum(levels[ink], INK_FLOOR)
                    labels[background] = np.minimum(levels[background], INK_FLOOR - 1)
                    images["inklabels"][start:stop] = labels
                    images["supervision"][start:stop] = np.where(ink | background, 255, 0).astype(np.uint8)
                    papyrus = mask_reader.rows(start, stop) > 0 if mask_reader is not None else np.True_
                    counts += [
                        np.count_nonzero(np.broadcast_to(papyrus, ink.shape)),
                        np.count_nonzero(ink & papyrus),
                        np.count_nonzero(background & papyrus),
                        np.count_nonzero(~(ink | background) & papyrus),
                    ]
            finally:
                if mask_reader is not None:
                    mask_reader.close()
        for role, path in names.items():
            with atomic_path(path) as tmp:
                write_tiff_pyramid(tmp, images[role], folder)
        del images
    finally:
        for path in scratch.values():
            path.unlink(missing_ok=True)
    return {role: str(path.relative_to(out_dir)) for role, path in names.items()}, SegmentCounts(*map(int, counts))


def write_label_set(
    out_dir: Path,
    entries: Sequence[tuple[FragmentSources, dict[str, str], SegmentCounts]],
    record: dict,
) -> Path:
    """Writes the label set's manifest and record (atomically) once every segment's maps are written.

    Each manifest entry names the segment's original volume, mask and ignore map (absolute paths: nothing is
    copied) and the label set's own labels and supervision map.

    Returns:
        The manifest's path.
    """
    fragments = []
    segments = {}
    for sources, maps, counts in entries:
        entry: dict[str, str] = {"id": sources.id, "volume": str(sources.volume.resolve())}
        for role in ("mask", "ignore"):
            if role in sources.maps:
                entry[role] = str(sources.maps[role].resolve())
        entry.update(maps)
        fragments.append(entry)
        segments[sources.id] = {"source": str(sources.path.resolve()), **asdict(counts)}
    header = (
        "# A label set written by scripts/pseudo_label.py: train on it with --data.pseudo.folder <this folder>.\n"
        f"# The rule, the checkpoint and the pixel counts are in {LABEL_SET_RECORD}.\n"
    )
    atomic_write_text(out_dir / LABEL_SET_RECORD, json.dumps({**record, "segments": segments}, indent=2) + "\n")
    manifest = out_dir / LABEL_SET_MANIFEST
    atomic_write_text(manifest, header + yaml.safe_dump({"fragments": fragments}, sort_keys=False))
    return manifest
