"""Writes synthetic papyrus fragments in the real on-disk layout (see datamodules/synthetic/fragments.py).

Examples:
    python scripts/make_synthetic.py --out data/demo --num-fragments 2
    python scripts/make_synthetic.py --out data/big --height 8192 --width 8192 --depth 30 --compression lzw
    python scripts/make_synthetic.py --out data/zarr --format ome-zarr --zarr-format 2 --chunks 8,128,128
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from datamodules.synthetic import (  # noqa: E402
    FAINT_INK_CONTRAST,
    FAINT_REALISM,
    VOLUME_FORMATS,
    make_demo_data,
    make_fragment,
)
from datamodules.synthetic.maps import LABEL_STYLES, LABEL_SUFFIXES, MAP_LAYOUTS  # noqa: E402


def _chunks(text: str) -> tuple[int, int, int]:
    """Parses ``Z,Y,X`` into three positive ints."""
    try:
        chunks = tuple(int(part) for part in text.split(","))
    except ValueError:
        chunks = ()
    if len(chunks) != 3 or min(chunks) < 1:
        raise argparse.ArgumentTypeError(f"expected three positive integers Z,Y,X, got {text!r}")
    return chunks


def build_parser() -> argparse.ArgumentParser:
    """The command line's options."""
    parser = argparse.ArgumentParser(
        description=(
            "Write synthetic papyrus fragments: <out>/frag1 … <out>/fragN, each with <layers-dirname>/00.tif … "
            "(one uint16 or uint8 TIFF per depth slice) or <layers-dirname>.zarr (--format zarr/ome-zarr), "
            "mask.png, inklabels.png and ir.png. The ink is faint and "
            "follows a wobbling surface, so finding it takes a model, not a threshold. The same seed always "
            "gives the same bytes. With the default format options, fragments that already exist complete are "
            "left alone."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--out", required=True, type=Path, help="folder that receives the fragment folders")
    parser.add_argument("--num-fragments", type=int, default=1, help="number of fragments, named frag1, frag2, …")
    parser.add_argument(
        "--names",
        type=lambda text: [n.strip() for n in text.split(",") if n.strip()],
        default=None,
        help="comma-separated fragment folder names (ids such as 20230530164535) in place of frag1, frag2, …; "
        "their count sets --num-fragments",
    )
    parser.add_argument("--height", type=int, default=384, help="image height in pixels")
    parser.add_argument("--width", type=int, default=384, help="image width in pixels")
    parser.add_argument("--depth", type=int, default=65, help="slices per fragment")
    parser.add_argument("--seed", type=int, default=0, help="seed of frag1; fragment i uses seed + i - 1")
    parser.add_argument("--dtype", choices=("uint16", "uint8"), default="uint16", help="slice pixel type")
    parser.add_argument(
        "--compression", choices=("none", "lzw", "zlib"), default="none", help="TIFF compression of the slices"
    )
    parser.add_argument("--tiled", action="store_true", help="write 64x64-tiled TIFFs instead of strips")
    parser.add_argument(
        "--format",
        choices=VOLUME_FORMATS,
        default="tiff",
        help="volume storage: numbered TIFF slices, a zarr array, or an OME-Zarr group (level 0 = the array)",
    )
    parser.add_argument("--zarr-format", type=int, choices=(2, 3), default=3, help="zarr version (zarr formats)")
    parser.add_argument(
        "--chunks",
        type=_chunks,
        default=None,
        help="zarr chunk shape Z,Y,X (default 8,128,128: see datamodules/synthetic/zarr_writer.py; it holds Z slices)",
    )
    parser.add_argument(
        "--reverse-depth", action="store_true", help="store the slices in reversed depth order (00.tif deepest)"
    )
    parser.add_argument(
        "--layers-dirname",
        default="surface_volume",
        help="name of the slice folder (scroll segments use 'layers')",
    )
    parser.add_argument("--no-labels", action="store_true", help="do not write inklabels.png (as for prediction)")
    parser.add_argument(
        "--map-layout",
        choices=MAP_LAYOUTS,
        default="kaggle",
        help="map names: kaggle (mask.png, inklabels.png), segment (<id>_mask.png, <id>_inklabels.*) or monorepo "
        "(<id>_inklabels_v2.* over an older v1, <id>_supervision_mask.png, <id>_validation_mask.png)",
    )
    parser.add_argument(
        "--label-style",
        choices=LABEL_STYLES,
        default="binary",
        help="label storage: 0/255, anti-aliased grey, palette, RGBA, grey+alpha or 16-bit",
    )
    parser.add_argument(
        "--label-suffix", choices=LABEL_SUFFIXES, default=".png", help="label format (.tiff: tiled TIFF)"
    )
    parser.add_argument(
        "--faint",
        action="store_true",
        help="the realistic regime: ink at 0.7x the noise, patchy, loosely labelled, sheet thickness varying",
    )
    return parser


def main(argv: list[str] | None = None) -> list[Path]:
    """Writes the fragments the arguments ask for and returns their folders."""
    args = build_parser().parse_args(argv)
    if args.names:
        args.num_fragments = len(args.names)
    if args.num_fragments < 1:
        raise SystemExit(f"--num-fragments must be >= 1, got {args.num_fragments}")
    compression = None if args.compression == "none" else args.compression
    plain = (
        args.dtype == "uint16"
        and compression is None
        and not args.tiled
        and not args.reverse_depth
        and args.layers_dirname == "surface_volume"
        and not args.no_labels
        and args.format == "tiff"
        and (args.map_layout, args.label_style, args.label_suffix) == ("kaggle", "binary", ".png")
        and not args.names
    )
    if args.format == "tiff" and args.chunks is not None:
        raise SystemExit("make_synthetic: --chunks applies to --format zarr or ome-zarr")
    extra = {"ink_contrast": FAINT_INK_CONTRAST, "realism": FAINT_REALISM} if args.faint else {}
    start = time.perf_counter()
    try:
        if plain:
            paths = make_demo_data(
                args.out,
                num_fragments=args.num_fragments,
                height=args.height,
                width=args.width,
                depth=args.depth,
                seed=args.seed,
                **extra,
            )
        else:
            paths = [
                make_fragment(
                    args.out / (args.names[i - 1] if args.names else f"frag{i}"),
                    args.height,
                    args.width,
                    depth=args.depth,
                    seed=args.seed + i - 1,
                    layers_dirname=args.layers_dirname,
                    dtype=args.dtype,
                    compression=compression,
                    tiled=args.tiled,
                    reverse_depth=args.reverse_depth,
                    with_labels=not args.no_labels,
                    volume_format=args.format,
                    zarr_format=args.zarr_format,
                    chunks=args.chunks,
                    map_layout=args.map_layout,
                    label_style=args.label_style,
                    label_suffix=args.label_suffix,
                    **extra,
                )
                for i in range(1, args.num_fragments + 1)
            ]
    except ValueError as err:
        raise SystemExit(f"make_synthetic: {err}") from err
    elapsed = time.perf_counter() - start
    for path in paths:
        print(path)
    print(
        f"{len(paths)} fragment(s) of {args.depth}x{args.height}x{args.width} ready in {elapsed:.1f} s", file=sys.stderr
    )
    return paths


if __name__ == "__main__":
    main()
