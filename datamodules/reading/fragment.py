"""A fragment on disk: a lazy ``[Z, H, W]`` volume with its papyrus mask and ink labels.

Nothing here loads a volume into RAM. The volume is either a folder of numbered TIFF slices, memory-mapped
(`datamodules.reading.volume_tiff`), or a Zarr array / OME-Zarr group, local (``surface_volume.zarr``) or remote
(``surface_volume.url`` holding an fsspec URL), read chunk by chunk through a bounded cache
(`datamodules.reading.volume_zarr`). Where each file is comes from `datamodules.reading.layouts` (the community's folder
layouts, or a manifest); masks and labels, PNG, TIFF or zarr, become memory-mapped ``.npy`` caches
(`datamodules.reading.fragment_maps`). This class picks the backend and gives both one interface.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from datamodules.reading.chunk_cache import DEFAULT_CHUNK_CACHE_MB
from datamodules.reading.fragment_maps import binary_cache, excluded_cache, label_cache, source_stamp
from datamodules.reading.label_rules import LabelConfig
from datamodules.reading.layouts import (
    FragmentSources,
    discover_fragments,
    discover_sources,
    find_sources,
    find_volume,
    volume_candidates,
)
from datamodules.reading.volume_tiff import (
    SLICE_DIRS,
    SliceInfo,
    TiffVolume,
    find_volume_dir,
    inspect_slice,
    list_slices,
)
from datamodules.reading.volume_zarr import ZarrPlane, ZarrVolume, describe, read_url_file
from utils.layout import to_channels_last

__all__ = [
    "DEFAULT_Z_END",
    "DEFAULT_Z_START",
    "SLICE_DIRS",
    "Fragment",
    "FragmentSources",
    "SliceInfo",
    "discover_fragments",
    "discover_sources",
    "find_sources",
    "find_volume",
    "find_volume_dir",
    "volume_candidates",
    "inspect_slice",
    "list_slices",
]

# Default slice range [15, 45): 30 slices around the middle of the 65, covering the ranges the
# competition's winners found best (24-39, 17-42, 18-45) with room for the surface's wobble in depth.
DEFAULT_Z_START = 15
DEFAULT_Z_END = 45

_WHAT = {
    "mask": "mask",
    "inklabels": "ink labels",
    "ignore": "ignore mask",
    "supervision": "supervision mask",
    "validation": "validation mask",
}


class Fragment:
    """One fragment: a lazy ``[Z, H, W]`` volume, its mask, (optional) ink labels and maps of the pixels that count.

    Files and stores are opened on first read in each process, so a Fragment pickles to DataLoader workers and
    DDP processes without file handles, maps or zarr stores.

    Args:
        path: the fragment folder (its files found as `datamodules.reading.layouts` says), or its `FragmentSources`.
        z_start: first slice of the range the model sees (in depth order after ``reverse_depth``).
        z_end: one past the last slice of that range.
        reverse_depth: the fragment is stored with its depth order reversed; slice ``z`` is read from
            file ``Z-1-z``.
        cache_dir: where converted (compressed or tiled) slices and the map caches go, in a sub-folder named by
            the id; default the fragment's own (``<fragment>/.ink_cache``).
        require_labels: raise if the fragment has no ink labels.
        chunk_cache_mb: byte limit, in MiB, of the process's cache of decoded zarr chunks (shared by all zarr
            volumes of the process; unused for TIFF slices).
        labels: how label maps are read (threshold, soft targets, an "unknown" level).

    Raises:
        ValueError / FileNotFoundError / ImportError: with the file or setting named, for every inconsistency.
    """

    def __init__(
        self,
        path: str | Path | FragmentSources,
        *,
        z_start: int = DEFAULT_Z_START,
        z_end: int = DEFAULT_Z_END,
        reverse_depth: bool = False,
        cache_dir: str | Path | None = None,
        require_labels: bool = False,
        chunk_cache_mb: int = DEFAULT_CHUNK_CACHE_MB,
        labels: LabelConfig | None = None,
    ) -> None:
        self.sources = path if isinstance(path, FragmentSources) else find_sources(path)
        if isinstance(chunk_cache_mb, bool) or not isinstance(chunk_cache_mb, int) or chunk_cache_mb < 0:
            raise ValueError(f"chunk_cache_mb must be an integer >= 0, got {chunk_cache_mb!r}")
        default_cache = self.sources.cache_dir or self.path / ".ink_cache"
        self.cache_dir = Path(cache_dir) / self.id if cache_dir is not None else default_cache
        self._volume = self._open_volume(chunk_cache_mb << 20)
        self.depth, self.height, self.width = self._volume.shape
        self.dtype = self._volume.dtype
        if not 0 <= z_start < z_end:
            raise ValueError(f"z_start={z_start}, z_end={z_end}: need 0 <= z_start < z_end")
        if z_end > self.depth:
            raise ValueError(
                f"z_end={z_end} is beyond the last slice of fragment '{self.id}' "
                f"({self.depth} slices, 0..{self.depth - 1})"
            )
        self.z_start, self.z_end = z_start, z_end
        self.reverse_depth = reverse_depth
        self.label_rules = labels or LabelConfig()
        self._npy: dict[Path, np.ndarray] = {}
        # (lo, hi) raw values mapped to 0 and 1 by the model's input normalisation; None: the dtype's range.
        self.intensity: tuple[float, float] | None = None

        # Every map becomes a memory-mapped .npy cache like the slices (see datamodules/reading/fragment_maps.py).
        shape, maps = (self.height, self.width), self.sources.maps
        binary = {
            role: binary_cache(maps[role], self.cache_dir, shape, role, _WHAT[role])
            for role in ("mask", "ignore", "supervision", "validation")
            if role in maps
        }
        labels_files = (
            label_cache(maps["inklabels"], self.cache_dir, shape, self.label_rules) if "inklabels" in maps else None
        )
        if labels_files is None and require_labels:
            raise FileNotFoundError(
                f"fragment '{self.id}' ({self.path}) has no ink labels: expected inklabels.png, "
                f"{self.id}_inklabels[_vN].png/.tif/.tiff/.zarr, or a manifest naming them"
            )
        excluded = [binary[r] for r in ("ignore",) if r in binary]
        if labels_files is not None and labels_files.unknown is not None:
            excluded.append(labels_files.unknown)
        included = [binary["supervision"]] if "supervision" in binary else []
        found = {
            **binary,
            "ink": labels_files.ink if labels_files else None,
            "levels": labels_files.levels if labels_files else None,
            "summary": labels_files.summary if labels_files else None,
            "excluded": excluded_cache(self.cache_dir, shape, included, excluded),
        }
        # Every cache lies in cache_dir: keep their names only (small to pickle to every worker).
        self._caches: dict[str, str] = {key: path.name for key, path in found.items() if path is not None}

    def _open_volume(self, cache_bytes: int) -> TiffVolume | ZarrVolume:
        source = self.sources.volume
        if source.suffix == ".zarr":
            return ZarrVolume(source, describe(source), cache_bytes)
        if source.suffix == ".url":
            url = read_url_file(source)
            return ZarrVolume(url, describe(url, source), cache_bytes)
        return TiffVolume(source, self.cache_dir)

    @property
    def id(self) -> str:
        """The fragment's id."""
        return self.sources.id

    @property
    def path(self) -> Path:
        """The fragment folder (for a manifest entry without one, its volume)."""
        return self.sources.path

    @property
    def backend(self) -> str:
        """``"tiff"`` or ``"zarr"``: how the volume is stored."""
        return "zarr" if isinstance(self._volume, ZarrVolume) else "tiff"

    def _cached(self, key: str) -> np.ndarray | None:
        """The memory-mapped cache of ``key`` (a map role, ``ink``, ``levels``, ``excluded``), or None."""
        name = self._caches.get(key)
        return None if name is None else self._open_npy(self.cache_dir / name)

    @property
    def mask(self) -> np.ndarray:
        """Papyrus mask, bool ``[H, W]`` (memory-mapped; all True when the fragment has no mask)."""
        found = self._cached("mask")
        return np.broadcast_to(np.True_, (self.height, self.width)) if found is None else found

    @property
    def has_mask(self) -> bool:
        """Whether the fragment has a mask (without one every pixel counts as papyrus)."""
        return "mask" in self._caches

    @property
    def labels(self) -> np.ndarray | None:
        """Ink labels at the label threshold, bool ``[H, W]`` (memory-mapped), or None without labels."""
        return self._cached("ink")

    @property
    def label_levels(self) -> np.ndarray | None:
        """Grey label levels 0..255, uint8 ``[H, W]`` (memory-mapped); None without labels or for binary ones."""
        return self._cached("levels")

    @property
    def label_summary(self) -> dict | None:
        """What the label file is (``storage``, ``kind`` binary / grey, ``levels``, ``partial``), or None."""
        name = self._caches.get("summary")
        return None if name is None else json.loads((self.cache_dir / name).read_text())

    @property
    def supervision(self) -> np.ndarray | None:
        """Where labels are trusted, bool ``[H, W]`` (memory-mapped), or None: everywhere."""
        return self._cached("supervision")

    @property
    def validation(self) -> np.ndarray | None:
        """The region that validates (and never trains), bool ``[H, W]`` (memory-mapped), or None."""
        return self._cached("validation")

    @property
    def ignore(self) -> np.ndarray | None:
        """Pixels left out of the loss and the metric, bool ``[H, W]`` (memory-mapped), or None.

        The union of the ignore map, the labels' ``unknown`` level (when one is set) and everything outside the
        supervision map: uncertain regions are better left unscored than counted as ink or as papyrus.
        """
        return self._cached("excluded")

    def _open_npy(self, path: Path) -> np.ndarray:
        cached = self._npy.get(path)
        if cached is None:
            cached = self._npy[path] = np.load(path, mmap_mode="r")
        return cached

    @property
    def _maps(self) -> dict[object, np.ndarray]:
        """What this process has mapped so far (volume slices and 2-D maps); empty right after unpickling."""
        return {**self._volume.open_maps, **self._npy}

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(Z, H, W)`` of the whole stored volume."""
        return self.depth, self.height, self.width

    @property
    def num_slices(self) -> int:
        """Depth of the selected range ``z_end - z_start``."""
        return self.z_end - self.z_start

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_npy"] = {}  # maps are reopened lazily in each process (the volume drops its own handles)
        return state

    def _file_index(self, z: int) -> int:
        return self.depth - 1 - z if self.reverse_depth else z

    def _file_range(self, z0: int, z1: int) -> range:
        """The file indices of depth slices ``[z0, z1)``, ascending."""
        return range(self.depth - z1, self.depth - z0) if self.reverse_depth else range(z0, z1)

    def slice_info(self, z: int) -> SliceInfo:
        """The TIFF file behind slice ``z`` (depth order after ``reverse_depth``).

        Raises:
            TypeError: the volume is zarr (no file per slice).
        """
        if not isinstance(self._volume, TiffVolume):
            raise TypeError(f"fragment '{self.id}' is stored as zarr ({self._volume.source}): no file per slice")
        return self._volume.slices[self._file_index(z)]

    def source_key(self, z0: int, z1: int) -> str:
        """The versions of the volume's slices ``[z0, z1)`` and of the mask, for keying caches derived from them."""
        z0, z1 = max(0, z0), min(self.depth, z1)
        if isinstance(self._volume, ZarrVolume):
            key = self._volume.version_key(range(self.depth))  # one digest covers every slice
        else:
            # Depth order, one slice at a time: the key TIFF fragments have always had, so their caches stay valid.
            key = "".join(self._volume.version_key(range(i, i + 1)) for i in map(self._file_index, range(z0, z1)))
        if "mask" in self.sources.maps:
            key += f"mask:{source_stamp(self.sources.maps['mask'])}"
        return key

    def plane(self, z: int) -> np.ndarray | ZarrPlane:
        """Slice ``z`` (depth order after ``reverse_depth``): a read-only ``[H, W]`` memory map for TIFF, a lazy
        2-D view for zarr (slice it, e.g. ``plane(z)[::8, ::8]``, to read pixels)."""
        if not 0 <= z < self.depth:
            raise ValueError(f"slice {z} outside fragment '{self.id}' (0..{self.depth - 1})")
        return self._volume.plane(self._file_index(z))

    def prepare_cache(self, z0: int = 0, z1: int | None = None) -> int:
        """Converts the non-mappable TIFF slices of ``[z0, z1)`` in advance; returns how many were converted."""
        z0, z1 = max(0, z0), min(self.depth, self.depth if z1 is None else z1)
        return self._volume.prepare_cache(self._file_range(z0, z1)) if z0 < z1 else 0

    def read(
        self, z0: int, z1: int, y: int, x: int, size_y: int, size_x: int, *, channels_last: bool = True
    ) -> np.ndarray:
        """Copies ``volume[z0:z1, y:y+size_y, x:x+size_x]`` out of the volume; only the window is read.

        Returns an ``[size_y, size_x, z1-z0]`` array (albumentations works on ``H x W x C`` images), or with
        ``channels_last=False`` the ``[z1-z0, size_y, size_x]`` array the model takes. Slices are copied into
        ``[D, H, W]`` (contiguous rows) and, for ``H x W x C``, changed in one transpose.
        """
        if not (0 <= z0 < z1 <= self.depth):
            raise ValueError(f"depth range [{z0}, {z1}) outside fragment '{self.id}' (0..{self.depth})")
        if y < 0 or x < 0 or y + size_y > self.height or x + size_x > self.width:
            raise ValueError(
                f"window y={y}, x={x}, {size_y}x{size_x} outside fragment '{self.id}' ({self.height}x{self.width})"
            )
        out = np.empty((z1 - z0, size_y, size_x), dtype=self.dtype)
        files = self._file_range(z0, z1)
        # Reversed depth: the files come in ascending order into a reversed view, so each backend reads forward.
        self._volume.read_into(out[::-1] if self.reverse_depth else out, files.start, y, x)
        return to_channels_last(out) if channels_last else out

    def __repr__(self) -> str:
        return (
            f"Fragment('{self.id}', {self.depth}x{self.height}x{self.width} {self.dtype} {self.backend}, "
            f"z=[{self.z_start},{self.z_end}), labels={'yes' if self.labels is not None else 'no'})"
        )
