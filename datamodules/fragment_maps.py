"""A fragment's 2-D maps (papyrus mask, ink labels, ignore map): read from PNG or zarr, checked, cached as ``.npy``.

A real fragment's maps are 141 MB each; read into every DataLoader worker they would multiply that by the
worker count. So each map is read and checked once per version (the cache name carries the source's size and
modification time, or a digest of a zarr folder's files), written as an uncompressed ``.npy`` that the fragment
then memory-maps like its slices. A PNG is decoded whole (the format allows nothing else); a zarr map
(``mask.zarr``, ``inklabels.zarr``, ``ignore.zarr``: a 2-D ``(y, x)`` array or OME-Zarr group) is read band
of rows by band, so converting it never holds the whole map. The atomic ``.npy`` writer here also serves the
fragment's converted TIFF slices.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
from PIL import Image

from datamodules.volume_zarr import native_dtype, open_node, resolve_array, zarr_stamp
from utils.atomic import TMP_SUFFIX, atomic_open

MAP_SUFFIXES = (".png", ".zarr")
UNKNOWN_LABEL = 127
_MAP_DTYPES = ("bool", "uint8", "uint16")
_BAND_ROWS = 1024  # rows per band when converting a zarr map (about 10 MB of uint8 for a real fragment)


def find_map(folder: Path, stem: str) -> Path | None:
    """``<stem>.png`` or ``<stem>.zarr`` in ``folder``, or None when neither exists.

    Raises:
        ValueError: both exist (which one is meant is unclear).
    """
    found = [folder / f"{stem}{suffix}" for suffix in MAP_SUFFIXES if (folder / f"{stem}{suffix}").exists()]
    if len(found) > 1:
        raise ValueError(f"'{folder}' holds both {found[0].name} and {found[1].name}: keep one of them")
    return found[0] if found else None


def source_stamp(path: Path) -> str:
    """The version of a map source, for cache names: a PNG's size and mtime, a zarr folder's file digest."""
    if path.suffix == ".zarr":
        return f"z{zarr_stamp(path)}"
    stat = path.stat()
    return f"{stat.st_size}-{stat.st_mtime_ns}"


def read_binary_png(path: Path, shape: tuple[int, int], what: str, *, unknown: int | None = None) -> np.ndarray:
    """Reads a mask or label PNG as a bool array, accepting 0/255 or 0/1 values.

    Args:
        path: the PNG.
        shape: the volume's ``(H, W)``.
        what: what the file is, for error messages.
        unknown: a value also accepted, meaning "unknown" (labels: 127); such pixels read as False.

    Raises:
        ValueError: unreadable file, size other than ``shape`` or values that are not binary.
    """
    array = _read_png(path, shape, what)
    if array.dtype == bool:
        return array
    _check_binary(set(np.unique(array).tolist()), path, what, unknown)
    return _to_bool(array, unknown)


def read_unknown_labels(path: Path, shape: tuple[int, int], value: int = UNKNOWN_LABEL) -> np.ndarray | None:
    """Pixels of a label PNG marked unknown (``value``), or None when there are none."""
    array = _read_png(path, shape, "ink labels")
    if array.dtype == bool:
        return None
    unknown = array == value
    return unknown if unknown.any() else None


def _check_binary(values: set[int], path: Path, what: str, unknown: int | None) -> None:
    allowed = ({0, 255}, {0, 1}) if unknown is None else ({0, 255, unknown}, {0, 1, unknown})
    if not any(values <= ok for ok in allowed):
        shown = sorted(values)[:8]
        extra = "" if unknown is None else f", with {unknown} for unknown"
        raise ValueError(f"{what} '{path}' is not binary: values {shown}; expected 0/255 or 0/1{extra}")


def _to_bool(array: np.ndarray, unknown: int | None) -> np.ndarray:
    if array.dtype == bool:
        return array
    return (array > 0) & (array != unknown) if unknown is not None else array > 0


def _values(band: np.ndarray) -> set[int]:
    """The distinct values of a band; counting levels is far faster than sorting for 8- and 16-bit maps."""
    if band.dtype == bool:
        band = band.view(np.uint8)
    if band.dtype in (np.uint8, np.uint16):
        counts = np.bincount(band.ravel(), minlength=1)
        return set(np.flatnonzero(counts).tolist())
    return set(np.unique(band).tolist())


def _read_png(path: Path, shape: tuple[int, int], what: str) -> np.ndarray:
    """A map PNG as one array (its first channel), size checked."""
    array = np.asarray(_open_png(path, shape, what))
    return array[..., 0] if array.ndim == 3 else array


def _open_png(path: Path, shape: tuple[int, int], what: str) -> Image.Image:
    """A map PNG decoded by Pillow (kept as Pillow's own buffer), size checked."""
    previous, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None  # real masks exceed Pillow's bomb guard
    try:
        img = Image.open(path)
        img.load()  # Pillow closes a single-frame file it opened once decoded
    except Exception as err:
        raise ValueError(f"{what} '{path}' cannot be read as an image: {err}") from err
    finally:
        Image.MAX_IMAGE_PIXELS = previous
    _check_shape((img.height, img.width), shape, path, what)
    return img


def _check_shape(found: tuple[int, ...], shape: tuple[int, int], path: Path, what: str) -> None:
    if tuple(found) != tuple(shape):
        raise ValueError(
            f"{what} '{path}' is {found[1]}x{found[0]} (W x H) but the volume's slices are {shape[1]}x{shape[0]}"
        )


class MapReader:
    """Rows of a 2-D map, PNG or zarr, checked for size (and, for zarr, dimensions and dtype) on opening.

    Args:
        path: ``<name>.png`` or ``<name>.zarr``.
        shape: the volume's ``(H, W)``.
        what: what the map is, for error messages.

    Attributes:
        band_rows: rows per band that reading costs least (zarr: whole chunk rows; PNG: all rows, already read).

    Raises:
        ValueError / FileNotFoundError: an unreadable source, wrong size, dimensions or dtype, naming the file.
    """

    def __init__(self, path: Path, shape: tuple[int, int], what: str) -> None:
        self.path, self.shape, self.what = path, shape, what
        self._png: Image.Image | None = None
        if path.suffix == ".zarr":
            label = f"{what} '{path}'"
            self._zarr = resolve_array(open_node(path, label), label, ndim=2, axes=("y", "x"))
            native_dtype(self._zarr, label, _MAP_DTYPES)
            _check_shape(tuple(self._zarr.shape), shape, path, what)
            chunk_rows = int(self._zarr.chunks[0])
            self.band_rows = chunk_rows * max(1, _BAND_ROWS // chunk_rows)
        else:
            # Pillow decodes a PNG whole (1 byte a pixel for a grey map); rows are then copied out band by band, so
            # nothing else of the map's size is made (an 8192² mask: 64 MiB, where full-size temporaries took 576 MiB).
            self._png = _open_png(path, shape, what)
            self.band_rows = max(16, (1 << 21) // max(1, shape[1]))  # about 2 Mi pixels a band

    def rows(self, start: int, stop: int) -> np.ndarray:
        """Rows ``[start, stop)`` as stored (bool or unsigned integers)."""
        if self._png is not None:
            band = np.asarray(self._png.crop((0, start, self.shape[1], stop)))
            return band[..., 0] if band.ndim == 3 else band
        try:
            return np.asarray(self._zarr[start:stop])
        except Exception as err:  # a damaged chunk: name the map rather than zarr's internals
            raise ValueError(f"{self.what} '{self.path}': cannot read rows {start}..{stop}: {err}") from err


def _bands(readers: list[MapReader]) -> Iterator[tuple[slice, list[np.ndarray]]]:
    """Row bands read from every reader at once, the band height the smallest any of them wants."""
    height = readers[0].shape[0]
    step = min(r.band_rows for r in readers)
    for start in range(0, height, step):
        stop = min(start + step, height)
        yield slice(start, stop), [r.rows(start, stop) for r in readers]


def _write_bool_npy(
    target: Path, shape: tuple[int, int], fill: Callable[[np.ndarray], bool], *, stale: str, keep_empty: bool
) -> bool:
    """Writes a bool ``.npy`` atomically, ``fill`` writing it band by band into a memory map.

    Returns:
        Whether any pixel is True. With ``keep_empty=False`` an all-False result is not kept.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    for old in target.parent.glob(stale):
        if old != target:
            old.unlink(missing_ok=True)  # the source changed since this copy was made
    temp = target.with_name(f".{target.name}.{secrets.token_hex(6)}{TMP_SUFFIX}")
    try:
        out = np.lib.format.open_memmap(temp, mode="w+", dtype=bool, shape=shape)
        anything = fill(out)
        out.flush()
        del out
        if anything or keep_empty:
            os.replace(temp, target)
        return anything
    finally:
        temp.unlink(missing_ok=True)


def binary_cache(source: Path, cache_dir: Path, shape: tuple[int, int], what: str) -> Path:
    """The ``.npy`` copy of a mask or label map (PNG or zarr), made (and checked) once per version.

    Args:
        source: ``mask.png``/``.zarr`` or ``inklabels.png``/``.zarr`` (whose 127 pixels mean "unknown" and read as
            False).
        cache_dir: the fragment's cache folder.
        shape: the volume's ``(H, W)``.
        what: what the file is, for error messages.

    Returns:
        The cache file, a bool ``[H, W]`` array.

    Raises:
        ValueError: see `read_binary_png`; for zarr also wrong dimensions or dtype.
    """
    stem = source.name.split(".")[0]
    target = cache_dir / f"{stem}.{source_stamp(source)}.npy"
    if target.exists():
        return target
    unknown = UNKNOWN_LABEL if stem == "inklabels" else None
    reader = MapReader(source, shape, what)

    def fill(out: np.ndarray) -> bool:
        seen: set[int] = set()
        for rows, (band,) in _bands([reader]):
            seen |= _values(band)
            _check_binary(seen, source, what, unknown)  # fails at the first band that breaks the rules
            out[rows] = _to_bool(band, unknown)
        return True

    _write_bool_npy(target, shape, fill, stale=f"{stem}.*.npy", keep_empty=True)
    return target


def ignore_cache(label_path: Path, ignore_path: Path, cache_dir: Path, shape: tuple[int, int]) -> Path | None:
    """The ``.npy`` cache of the pixels left unscored: the ignore map and the labels' unknown (127) pixels.

    A ``.none`` marker records that a version of the sources has no such pixel, so it is not read again.

    Args:
        label_path: the fragment's ``inklabels.png`` or ``.zarr`` (may be missing).
        ignore_path: the fragment's ``ignore.png`` or ``.zarr`` (may be missing).
        cache_dir: the fragment's cache folder.
        shape: the volume's ``(H, W)``.

    Returns:
        The cache file, a bool ``[H, W]`` array, or None when no pixel is ignored.

    Raises:
        ValueError: see `read_binary_png`.
    """
    sources = [p for p in (label_path, ignore_path) if p.exists()]
    if not sources:
        return None
    stamp = "-".join(source_stamp(p) for p in sources)
    target = cache_dir / f"ignore.{stamp}.npy"
    none_marker = cache_dir / f"ignore.{stamp}.none"
    if none_marker.exists():
        return None
    if target.exists():
        return target
    labels = MapReader(label_path, shape, "ink labels") if label_path.exists() else None
    ignore = MapReader(ignore_path, shape, "ignore mask") if ignore_path.exists() else None
    readers = [r for r in (labels, ignore) if r is not None]

    def fill(out: np.ndarray) -> bool:
        seen: set[int] = set()
        anything = False
        for rows, bands in _bands(readers):
            band = np.zeros((rows.stop - rows.start, shape[1]), dtype=bool)
            if labels is not None and bands[0].dtype != bool:
                band |= bands[0] == UNKNOWN_LABEL
            if ignore is not None:
                seen |= _values(bands[-1])
                _check_binary(seen, ignore.path, "ignore mask", None)
                band |= _to_bool(bands[-1], None)
            out[rows] = band
            anything = anything or bool(band.any())
        return anything

    if _write_bool_npy(target, shape, fill, stale="ignore.*", keep_empty=False):
        return target
    for old in cache_dir.glob("ignore.*"):
        old.unlink(missing_ok=True)
    none_marker.touch()
    return None


def save_npy(target: Path, array: np.ndarray, *, stale: str) -> None:
    """Writes ``array`` as ``target`` (.npy) atomically, and removes the older versions matching ``stale``.

    Args:
        target: the ``.npy`` file; its folder is created if missing.
        array: what to store (written C-contiguous).
        stale: glob pattern, in ``target``'s folder, of the copies made from earlier versions of the source.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    for old in target.parent.glob(stale):
        if old != target:
            old.unlink(missing_ok=True)  # the source changed since this copy was made
    with atomic_open(target, "wb", fsync=False) as handle:
        np.save(handle, np.ascontiguousarray(array))
