"""Pre-flight: what each fragment's files are, and its layers, dtype, papyrus surface, depth order and a slice window.

For every fragment it says which files training will use (the volume; the mask, labels, ignore / supervision /
validation maps found under the community's names or a manifest's, with the versions seen), what the labels are
(binary or anti-aliased grey, palette, RGBA, 16-bit …) and the ink fraction inside the mask. It reads a strided
sample of every layer inside the mask (CPU, seconds even for large segments) and finds the surface on the depth
intensity profile (`datamodules.reading.depth_profile`, which says which depth order counts as normal).
Windows are in STORED order (file order). Exit code 1 when a fragment could not be analysed.

Examples:
    python scripts/inspect_data.py data/demo
    python scripts/inspect_data.py data/segments --depth 26 --plot profiles.png --fragments seg_a seg_b
    python scripts/inspect_data.py data/segments --json
    python scripts/inspect_data.py fragments.yaml          # a manifest naming each fragment's files
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from datamodules.reading.depth_profile import DepthProfile, depth_profile, detect_surface  # noqa: E402
from datamodules.reading.fragment import DEFAULT_Z_END, DEFAULT_Z_START, Fragment, FragmentSources  # noqa: E402
from datamodules.reading.label_rules import LabelConfig  # noqa: E402
from datamodules.reading.layouts import ROLES, discover_sources  # noqa: E402
from scripts._entry import USER_ERRORS  # noqa: E402
from utils.png import write_png  # noqa: E402
from utils.profile_chart import ProfileCurve, profile_chart  # noqa: E402

_COLUMNS = ("fragment", "layers", "dtype", "shape (ZxHxW)", "surface", "order", "window", "note")


def build_parser() -> argparse.ArgumentParser:
    """The command line's options."""
    parser = argparse.ArgumentParser(
        description=(
            "For each fragment of DATA_DIR: layers, dtype, shape, the papyrus surface found on the depth intensity "
            "profile, whether the depth order is reversed, and a window of --depth layers centred on the surface, "
            "[z_start, z_end) in stored (file) order."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("data_dir", type=Path, help="folder of fragment folders, or a manifest (.yaml/.json)")
    parser.add_argument("--json", action="store_true", help="print only a JSON list, one object per fragment")
    parser.add_argument(
        "--depth", type=int, default=DEFAULT_Z_END - DEFAULT_Z_START, help="the model's input depth (window size)"
    )
    parser.add_argument("--plot", type=Path, help="write a PNG of the profiles, surfaces and windows here")
    parser.add_argument("--fragments", nargs="+", metavar="NAME", help="only these fragments (default: all)")
    parser.add_argument(
        "--cache-dir", type=Path, help="where mask caches go (default <fragment>/.ink_cache, as for training)"
    )
    parser.add_argument(
        "--label-threshold", type=float, default=0.5, help="ink where a label's level reaches this (as --data.labels)"
    )
    parser.add_argument("--label-unknown", type=int, help="a label level meaning unknown (as --data.labels.unknown)")
    return parser


def inspect_fragment(
    sources: FragmentSources, depth: int, cache_dir: Path | None, labels: LabelConfig | None = None
) -> tuple[dict[str, Any], DepthProfile | None]:
    """One fragment's report (the JSON object) and profile; a fragment that cannot be analysed gets ``error``.

    Keys: ``id``, ``path``, ``layout``, ``volume``, ``files`` (role -> file name or None), ``labels`` (what the
    label file is, with ``ink_fraction`` inside the mask and supervision map), ``notes`` (versions chosen, files
    not used), ``layers``, ``dtype``, ``shape`` ([Z, H, W]), ``surface`` (layers, stored order), ``reversed``,
    ``z_start``, ``z_end`` (stored order), ``depth``, ``confident``, ``note``, ``error``; values that could not be
    found are None.
    """
    report: dict[str, Any] = {"id": sources.id, "path": str(sources.path), "layout": sources.layout}
    report.update(volume=str(sources.volume), files={r: _name(sources.maps.get(r)) for r in ROLES})
    report.update(labels=None, notes=list(sources.notes))
    report.update(dict.fromkeys(("layers", "dtype", "shape", "surface", "reversed", "z_start", "z_end")))
    report.update(depth=depth, confident=None, note="", error=None)
    profile = None
    try:
        fragment = Fragment(sources, z_start=0, z_end=1, cache_dir=cache_dir, labels=labels)
        shape = [fragment.depth, fragment.height, fragment.width]
        report.update(layers=fragment.depth, dtype=np.dtype(fragment.dtype).name, shape=shape)
        if fragment.labels is not None:
            report["labels"] = {
                **fragment.label_summary,
                "threshold": fragment.label_rules.threshold,
                "ink_fraction": round(ink_fraction(fragment), 5),
            }
        profile = depth_profile(fragment)
        estimate = detect_surface(profile)
        report.update(surface=round(estimate.surface, 2), reversed=estimate.reversed)
        report.update(confident=estimate.confident, note=estimate.note)
        report["z_start"], report["z_end"] = estimate.window(depth)
    except USER_ERRORS as err:
        report["error"] = str(err)
    return report, profile


def _name(path: Path | None) -> str | None:
    return None if path is None else path.name


def ink_fraction(fragment: Fragment) -> float:
    """Ink pixels / labelled pixels: inside the mask and the supervision map, outside ignored ones; band by band."""
    ink = total = 0
    step = max(1, (1 << 22) // fragment.width)
    for start in range(0, fragment.height, step):
        rows = slice(start, start + step)
        counted = np.array(fragment.mask[rows], dtype=bool)
        if fragment.ignore is not None:
            counted &= ~fragment.ignore[rows]
        total += int(counted.sum())
        ink += int((fragment.labels[rows] & counted).sum())
    return ink / total if total else 0.0


def format_files(report: dict[str, Any]) -> str:
    """What a fragment's files are, one line each, as the table's preamble."""
    lines = [f"{report['id']} ({report['layout']} layout, {report['path']})", f"  volume       {report['volume']}"]
    files = report["files"]
    if files["mask"] is None:
        lines.append("  mask         no mask: every pixel counts as papyrus")
    for role in ROLES:
        name = files[role]
        if name is None:
            continue
        line = f"  {role:<12} {name}"
        if role == "inklabels" and report["labels"]:
            info = report["labels"]
            detail = "binary" if info["kind"] == "binary" else f"grey: {info['levels']} levels, "
            detail += "" if info["kind"] == "binary" else f"{100 * info['partial']:.2f} % of pixels partial"
            ink = f"ink {100 * info['ink_fraction']:.2f} % of the labelled papyrus at >= {100 * info['threshold']:g} %"
            line += f": {info['storage']}, {detail}; {ink}"
        lines.append(line)
    if files["inklabels"] is None:
        lines.append("  inklabels    none (can be predicted, not trained or scored)")
    lines.extend(f"  note         {note}" for note in report["notes"])
    return "\n".join(lines)


def format_table(reports: list[dict[str, Any]], depth: int) -> str:
    """The reports as an aligned text table with a footnote."""
    rows = [list(_COLUMNS)]
    for r in reports:
        shape = "x".join(str(s) for s in r["shape"]) if r["shape"] else "-"
        surface = f"{r['surface']:.1f}" if r["surface"] is not None else "-"
        order = "-" if r["reversed"] is None else ("reversed" if r["reversed"] else "normal")
        window = f"[{r['z_start']}, {r['z_end']})" if r["z_start"] is not None else "-"
        note = f"error: {r['error']}" if r["error"] else (f"guess: {r['note']}" if r["note"] else "")
        rows.append([r["id"], str(r["layers"] or "-"), r["dtype"] or "-", shape, surface, order, window, note])
    widths = [max(len(row[i]) for row in rows) for i in range(len(_COLUMNS) - 1)]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)) + "  " + row[-1] for row in rows]
    lines.append(f"\nwindows of {depth} layers in stored (file) order; normal order: papyrus at higher layer indices")
    lines.append("than the surface. --data.window.reverse_depth auto reads a reversed fragment flipped: its")
    lines.append("window is then [layers - z_end, layers - z_start).")
    return "\n".join(line.rstrip() for line in lines)


def write_plot(path: Path, reports: list[dict[str, Any]], profiles: list[DepthProfile | None], depth: int) -> Path:
    """Writes the profiles chart as a PNG, atomically."""
    curves = []
    for report, profile in zip(reports, profiles):
        if profile is None:
            continue
        order = "" if report["reversed"] is None else (" reversed" if report["reversed"] else " normal")
        window = (report["z_start"], report["z_end"]) if report["z_start"] is not None else None
        surface = "-" if report["surface"] is None else f"{report['surface']:.1f}"
        shown = f"[{window[0]}, {window[1]})" if window else "-"
        label = f"{report['id']}: {report['layers']} layers, surface {surface}{order}, window {shown}"
        curves.append(ProfileCurve(label, profile.values, report["surface"], window))
    if not curves:
        raise ValueError(f"--plot {path}: no fragment has a depth profile to draw")
    title = f"mean intensity inside the mask per layer (stored order); windows of {depth} layers"
    return write_png(path, profile_chart(curves, title=title))


def main(argv: list[str] | None = None) -> int:
    """Prints the report the arguments ask for; returns the exit code."""
    args = build_parser().parse_args(argv)
    try:
        if args.depth < 1:
            raise ValueError(f"--depth must be >= 1, got {args.depth}")
        rules = LabelConfig(threshold=args.label_threshold, unknown=args.label_unknown)
        paths = discover_sources(args.data_dir)
        if args.fragments:
            found = {p.id: p for p in paths}
            missing = [n for n in args.fragments if n not in found]
            if missing:
                raise ValueError(f"fragment(s) {missing} not found in '{args.data_dir}'; found {sorted(found)}")
            paths = [found[n] for n in args.fragments]
        results = [inspect_fragment(p, args.depth, args.cache_dir, rules) for p in paths]
        reports, profiles = [r for r, _ in results], [p for _, p in results]
        if args.json:
            print(json.dumps(reports, indent=2))
        else:
            print(format_table(reports, args.depth) + "\n")
            print("\n\n".join(format_files(r) for r in reports))
        if args.plot is not None:
            print(f"profiles drawn in {write_plot(args.plot, reports, profiles, args.depth)}", file=sys.stderr)
    except USER_ERRORS as err:
        if os.environ.get("INK_DEBUG"):
            raise
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 1 if any(r["error"] for r in reports) else 0


if __name__ == "__main__":
    sys.exit(main())
