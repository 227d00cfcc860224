"""Synthetic fragments written in the real layouts: the demo data, the tests' and the benchmarks' fragments, the
generator's physics and realism knobs, and the single-slice bound that shows the ink needs learning."""

from datamodules.synthetic.fragments import (
    FAINT_INK_CONTRAST,
    FAINT_REALISM,
    VOLUME_FORMATS,
    Realism,
    make_demo_data,
    make_fragment,
    slice_name,
)

__all__ = [
    "FAINT_INK_CONTRAST",
    "FAINT_REALISM",
    "Realism",
    "VOLUME_FORMATS",
    "make_demo_data",
    "make_fragment",
    "slice_name",
]
