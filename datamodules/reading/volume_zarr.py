"""A volume stored as a Zarr array (v2 or v3) or OME-Zarr multiscale group, local or behind an fsspec URL.

Chunks are decoded on demand and kept in the process's byte-bounded LRU cache (`datamodules.reading.chunk_cache`),
so memory stays flat however large the volume is. The zarr handle is opened lazily in each process, so the
volume pickles to DataLoader workers and DDP processes without open stores. The same opening and checking
serves the 2-D ``mask.zarr`` / ``inklabels.zarr`` maps (`datamodules.reading.fragment_maps`).
"""

from __future__ import annotations

import hashlib
import itertools
import math
import os
import uuid
from pathlib import Path
from typing import Any

import numpy as np

try:  # zarr 3 needs Python >= 3.11; TIFF fragments work without it
    import zarr
    from zarr.storage import FsspecStore, LocalStore
except ImportError:  # pragma: no cover - only on Python 3.10 or without zarr
    zarr = None  # type: ignore[assignment]

from datamodules.reading.chunk_cache import process_cache

NO_ZARR = "zarr volumes need the zarr package (zarr>=3, Python >= 3.11): pip install 'zarr>=3,<4'"

_VOLUME_DTYPES = ("uint8", "uint16")
_METADATA_FILES = ("zarr.json", ".zarray", ".zgroup", ".zattrs")
_FSSPEC_HINT = (
    "remote volumes need fsspec's implementation of the protocol installed: "
    "pip install aiohttp (http/https), s3fs (s3), gcsfs (gs), adlfs (az)"
)

Location = Path | str  # a local .zarr folder, or an fsspec URL


def read_url_file(path: Path) -> str:
    """The fsspec URL that a ``surface_volume.url`` file holds (one line, ``protocol://…``).

    Raises:
        ValueError: the file is empty, holds more than one line or no ``protocol://`` URL.
    """
    lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if len(lines) != 1 or "://" not in lines[0]:
        shown = lines[0][:80] if len(lines) == 1 else f"{len(lines)} non-empty lines"
        raise ValueError(
            f"'{path}' must hold one fsspec URL of a zarr volume, such as file:///data/frag/surface_volume.zarr "
            f"or s3://bucket/frag.zarr; found {shown!r}"
        )
    return lines[0]


def describe(location: Location, url_file: Path | None = None) -> str:
    """How error messages name a zarr source: its folder, or its URL and the ``.url`` file naming it."""
    return f"'{location}'" if url_file is None else f"'{location}' (named in '{url_file}')"


def open_node(location: Location, label: str) -> zarr.Array | zarr.Group:
    """Opens a zarr array or group read-only.

    Raises:
        FileNotFoundError: nothing at ``location``, or no zarr metadata there.
        ImportError: the URL's protocol needs an fsspec implementation that is not installed.
        ValueError: an unknown protocol or unreadable metadata.
    """
    if zarr is None:
        raise ImportError(f"{label}: {NO_ZARR}")
    try:
        if isinstance(location, Path):
            if not location.is_dir():
                raise FileNotFoundError(f"zarr volume {label} is missing or not a folder")
            store = LocalStore(location, read_only=True)
        else:
            store = FsspecStore.from_url(location, read_only=True)
        return zarr.open(store=store, mode="r")
    except FileNotFoundError as err:
        if isinstance(location, Path) and not location.is_dir():
            raise
        raise FileNotFoundError(f"{label} holds no zarr array or group (no zarr.json or .zarray found)") from err
    except ImportError as err:
        protocol = str(location).split("://", 1)[0]
        raise ImportError(f"{label}: protocol '{protocol}' is not installed ({err}); {_FSSPEC_HINT}") from err
    except ValueError as err:
        raise ValueError(f"{label} cannot be opened as zarr: {err}") from err
    except OSError as err:
        raise OSError(f"{label} cannot be opened: {type(err).__name__}: {err}") from err


def _multiscales(group: zarr.Group, label: str) -> list[dict[str, Any]]:
    """The OME ``multiscales`` list of a group (OME-Zarr 0.4 keeps it at the top, 0.5 under ``ome``)."""
    attrs = dict(group.attrs)
    multiscales = attrs.get("multiscales", attrs.get("ome", {}).get("multiscales") if "ome" in attrs else None)
    if not isinstance(multiscales, list) or not multiscales:
        raise ValueError(
            f"{label} is a zarr group without OME 'multiscales' metadata: expected a zarr array, or an OME-Zarr "
            "group whose multiscales[0].datasets[0].path names its full-resolution array"
        )
    return multiscales


def resolve_array(node: zarr.Array | zarr.Group, label: str, *, ndim: int, axes: tuple[str, ...]) -> zarr.Array:
    """The array of a node: the node itself, or level 0 of an OME-Zarr group; shape and axes checked.

    Raises:
        ValueError: an OME group without multiscales or level 0, unexpected axes or dimensions.
    """
    if isinstance(node, zarr.Group):
        first = _multiscales(node, label)[0]
        datasets = first.get("datasets") if isinstance(first, dict) else None
        path = datasets[0].get("path") if isinstance(datasets, list) and datasets else None
        if not isinstance(path, str):
            raise ValueError(f"{label}: OME multiscales[0] has no datasets[0].path naming its level-0 array")
        names = [a.get("name") if isinstance(a, dict) else a for a in first.get("axes", [])]
        if names and tuple(names) != axes:
            raise ValueError(f"{label}: OME axes are {names}; expected {list(axes)}")
        try:
            level = node[path]
        except KeyError as err:
            raise ValueError(f"{label}: OME level-0 array '{path}' is missing") from err
        if not isinstance(level, zarr.Array):
            raise ValueError(f"{label}: OME level-0 path '{path}' is a group, not an array")
        node, label = level, f"{label} level '{path}'"
    if node.ndim != ndim:
        raise ValueError(f"{label} has {node.ndim} dimensions {tuple(node.shape)}; expected {ndim} ({', '.join(axes)})")
    if min(node.shape) == 0:
        raise ValueError(f"{label} is empty: shape {tuple(node.shape)}")
    return node


def native_dtype(array: zarr.Array, label: str, allowed: tuple[str, ...]) -> np.dtype:
    """The array's dtype in native byte order, checked against ``allowed`` names.

    Raises:
        ValueError: another dtype.
    """
    try:
        dtype = np.dtype(array.dtype).newbyteorder("=")
    except TypeError as err:
        raise ValueError(f"{label} has dtype {array.dtype}; expected {' or '.join(allowed)}") from err
    if dtype.name not in allowed:
        raise ValueError(f"{label} has dtype {dtype.name}; expected {' or '.join(allowed)}")
    return dtype


def zarr_stamp(location: Location) -> str:
    """A short digest of a zarr source's version, to name the caches derived from it.

    Local: the names, sizes and modification times of all its files, so rewriting a single chunk in place is
    seen. Remote: what the store says about the metadata files (size, ETag or modification time): listing
    every chunk of a remote volume would cost a request per folder.
    """
    digest = hashlib.sha1()
    if isinstance(location, Path):
        for folder, _, files in sorted(os.walk(location)):
            for name in sorted(files):
                stat = os.stat(os.path.join(folder, name))
                digest.update(f"{os.path.relpath(folder, location)}/{name}:{stat.st_size}:{stat.st_mtime_ns};".encode())
    else:
        from fsspec.core import url_to_fs

        fs, root = url_to_fs(location)
        digest.update(location.encode())
        for name in _METADATA_FILES:
            try:
                info = fs.info(f"{root.rstrip('/')}/{name}")
            except (FileNotFoundError, OSError):
                continue
            keys = ("size", "mtime", "LastModified", "last_modified", "ETag", "etag", "created")
            digest.update(f"{name}:{[str(info.get(k)) for k in keys]};".encode())
    return digest.hexdigest()[:16]


class ZarrVolume:
    """A zarr ``[Z, H, W]`` volume read through the process's chunk cache, indexed in file order.

    Args:
        location: the ``.zarr`` folder, or an fsspec URL.
        label: how messages name it (see `describe`).
        cache_bytes: the byte limit of the process's chunk cache.

    Raises:
        FileNotFoundError / ImportError / ValueError: naming the source, see `open_node` and `resolve_array`.
    """

    def __init__(self, location: Location, label: str, cache_bytes: int) -> None:
        self.location = location
        self.source = label
        self.cache_bytes = cache_bytes
        array = self._open()
        self.shape: tuple[int, int, int] = tuple(int(s) for s in array.shape)
        self.dtype = native_dtype(array, label, _VOLUME_DTYPES)
        self.chunks: tuple[int, int, int] = tuple(int(c) for c in array.chunks)
        # Keys this object's chunks in the shared cache: two volumes (or a volume rewritten between two
        # Fragments of the same path) never see each other's chunks.
        self._token = uuid.uuid4().hex
        self._stamp: str | None = None
        self._array: zarr.Array | None = array
        self._pid = os.getpid()

    def _open(self) -> zarr.Array:
        node = open_node(self.location, self.source)
        return resolve_array(node, self.source, ndim=3, axes=("z", "y", "x"))

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_array"] = None  # reopened lazily in each process
        return state

    @property
    def array(self) -> zarr.Array:
        """The zarr array, opened once per process."""
        if self._array is None or self._pid != os.getpid():
            self._array, self._pid = self._open(), os.getpid()
        return self._array

    @property
    def open_maps(self) -> dict[int, np.ndarray]:
        """No memory maps: chunks live in the process's chunk cache."""
        return {}

    def plane(self, index: int) -> ZarrPlane:
        """File slice ``index`` as a lazy ``[H, W]`` view (slicing it reads only what is asked)."""
        return ZarrPlane(self, index)

    def prepare_cache(self, indices: range) -> int:
        """Nothing to convert: chunks are decoded on demand."""
        return 0

    def version_key(self, indices: range) -> str:
        """The source's version digest (see `zarr_stamp`), computed once per object."""
        if self._stamp is None:
            self._stamp = zarr_stamp(self.location)
        return f"zarr:{self._stamp}"

    def _get(self, selection: tuple[slice | int, ...]) -> np.ndarray:
        try:
            data = self.array[selection]
        except (OSError, ValueError, RuntimeError) as err:
            raise ValueError(f"cannot read {self.source} at {selection}: {type(err).__name__}: {err}") from err
        return np.asarray(data).astype(self.dtype, copy=False)

    def read_into(self, out: np.ndarray, first: int, y: int, x: int) -> None:
        """Fills ``out`` ``[n, h, w]`` with file slices ``first … first+n-1``, window ``(y, x)``; ``out`` may be a
        reversed view. Decoded chunks come from, and go to, the chunk cache."""
        box = tuple((lo, lo + n) for lo, n in zip((first, y, x), out.shape))
        grids = [range(lo // c, (hi - 1) // c + 1) for (lo, hi), c in zip(box, self.chunks)]
        keys = list(itertools.product(*grids))
        cache = process_cache(self.cache_bytes)
        if len(keys) * math.prod(self.chunks) * self.dtype.itemsize > cache.max_bytes // 2:
            # The window's chunks would crowd out the cache: read it straight through, uncached.
            out[...] = self._get(tuple(slice(lo, hi) for lo, hi in box))
            return
        chunks: dict[tuple[int, ...], np.ndarray] = {}
        missing = []
        for key in keys:
            chunk = cache.get((self._token, key))
            if chunk is None:
                missing.append(key)
            else:
                chunks[key] = chunk
        if missing:
            chunks.update(self._fetch(missing))
        for key, chunk in chunks.items():
            origin = [k * c for k, c in zip(key, self.chunks)]
            src, dst = [], []
            for (lo, hi), start, size in zip(box, origin, chunk.shape):
                a, b = max(lo, start), min(hi, start + size)
                src.append(slice(a - start, b - start))
                dst.append(slice(a - lo, b - lo))
            out[tuple(dst)] = chunk[tuple(src)]

    def _fetch(self, keys: list[tuple[int, ...]]) -> dict[tuple[int, ...], np.ndarray]:
        """Decodes the chunks spanning ``keys`` in one zarr read (zarr fetches them concurrently) and caches them."""
        low = [min(k[d] for k in keys) for d in range(3)]
        high = [max(k[d] for k in keys) + 1 for d in range(3)]
        bounds = [(lo * c, min(hi * c, n)) for lo, hi, c, n in zip(low, high, self.chunks, self.shape)]
        block = self._get(tuple(slice(a, b) for a, b in bounds))
        single = all(hi - lo == 1 for lo, hi in zip(low, high))
        cache = process_cache(self.cache_bytes)
        fetched = {}
        for key in itertools.product(*(range(lo, hi) for lo, hi in zip(low, high))):
            part = tuple(
                slice((k - lo) * c, (k - lo + 1) * c) for k, lo, c in zip(key, low, self.chunks)
            )  # numpy clips the last chunk of each axis
            # Copied so that each cached chunk owns exactly its bytes (a view would keep the whole block alive).
            chunk = block if single else block[part].copy()
            cache.put((self._token, key), chunk)
            fetched[key] = chunk
        return fetched

    def read_plane(self, index: int, rows: slice, cols: slice) -> np.ndarray:
        """``plane[rows, cols]`` of file slice ``index`` (forward slices with resolved bounds).

        A chunk holds several slices, and callers sample slice after slice (intensity percentiles, depth
        profiles), so the same region of every slice of the chunk's depth block is read at once and kept in
        the cache: the next slices are then free. Regions too large for that are read for this slice alone.
        """
        count = len(range(rows.start, rows.stop, rows.step)) * len(range(cols.start, cols.stop, cols.step))
        cache = process_cache(self.cache_bytes)
        depth = self.chunks[0]
        z0 = index // depth * depth
        z1 = min(z0 + depth, self.shape[0])
        if (z1 - z0) * count * self.dtype.itemsize > cache.max_bytes // 4:
            return self._get((index, rows, cols))
        key = (self._token, "planes", z0, rows.start, rows.stop, rows.step, cols.start, cols.stop, cols.step)
        block = cache.get(key)
        if block is None:
            block = self._get((slice(z0, z1), rows, cols))
            cache.put(key, block)
        return block[index - z0]


class ZarrPlane:
    """One slice of a `ZarrVolume` as a lazy 2-D array: ``plane[::8, ::8]`` reads only those pixels.

    Supports integer and slice indexing (any step) and ``np.asarray(plane)`` (the whole slice).
    """

    ndim = 2

    def __init__(self, volume: ZarrVolume, index: int) -> None:
        self._volume = volume
        self._index = index
        self.shape: tuple[int, int] = volume.shape[1:]
        self.dtype = volume.dtype

    def __getitem__(self, key: object) -> np.ndarray:
        if not isinstance(key, tuple):
            key = (key,)
        if any(k is Ellipsis for k in key):
            position = next(i for i, k in enumerate(key) if k is Ellipsis)
            key = key[:position] + (slice(None),) * (3 - len(key)) + key[position + 1 :]
        if len(key) > 2:
            raise IndexError(f"too many indices for a 2-D slice of {self._volume.source}: {key}")
        key = key + (slice(None),) * (2 - len(key))
        forward, flips, drops = [], [], []
        for axis, (item, size) in enumerate(zip(key, self.shape)):
            if isinstance(item, (int, np.integer)):
                position = int(item) + size if item < 0 else int(item)
                if not 0 <= position < size:
                    raise IndexError(f"index {item} out of range for axis {axis} of size {size}")
                forward.append(slice(position, position + 1, 1))
                drops.append(axis)
            elif isinstance(item, slice):
                start, stop, step = item.indices(size)
                picked = range(start, stop, step)
                if step < 0 and picked:
                    forward.append(slice(picked[-1], picked[0] + 1, -step))
                    flips.append(axis)
                elif not picked:
                    forward.append(slice(0, 0, 1))
                else:
                    forward.append(slice(start, stop, step))
            else:
                raise TypeError(f"a zarr slice view takes ints and slices, got {type(item).__name__}")
        if any(s.start >= s.stop for s in forward):
            result = np.empty([len(range(s.start, s.stop, s.step)) for s in forward], dtype=self.dtype)
        else:
            result = self._volume.read_plane(self._index, *forward)
        for axis in flips:
            result = np.flip(result, axis)
        return result[tuple(0 if axis in drops else slice(None) for axis in range(2))]

    def __array__(self, dtype: np.dtype | None = None, copy: bool | None = None) -> np.ndarray:
        data = self[:, :]
        return data if dtype is None else data.astype(dtype, copy=False)

    def __repr__(self) -> str:
        return f"ZarrPlane({self._volume.source}, slice {self._index}, {self.shape[0]}x{self.shape[1]} {self.dtype})"
