"""Reading fragments: where their files are, their volumes (TIFF stacks, zarr), 2-D maps, label rules, and what
each fragment's depth profile and intensities say. Nothing here augments, tiles or batches. The package's root
imports no Lightning (`utils.checkpoints` resolves `LabelConfig` through it); `layer_window`, which logs through
Lightning, is imported from its module."""

from datamodules.reading.depth_profile import DepthProfile, SurfaceEstimate, depth_profile, detect_surface
from datamodules.reading.fragment import DEFAULT_Z_END, DEFAULT_Z_START, Fragment
from datamodules.reading.intensity import intensity_range
from datamodules.reading.label_rules import LabelConfig
from datamodules.reading.layouts import (
    FragmentId,
    FragmentSources,
    discover_fragments,
    discover_sources,
    find_sources,
    fragment_ids,
    read_manifest,
)
from datamodules.reading.map_reader import MapReader

__all__ = [
    "DEFAULT_Z_END",
    "DEFAULT_Z_START",
    "DepthProfile",
    "Fragment",
    "FragmentId",
    "FragmentSources",
    "LabelConfig",
    "MapReader",
    "SurfaceEstimate",
    "depth_profile",
    "detect_surface",
    "discover_fragments",
    "discover_sources",
    "find_sources",
    "fragment_ids",
    "intensity_range",
    "read_manifest",
]
