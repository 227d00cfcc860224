"""A fragment's 2-D maps (papyrus mask, ink labels, ignore / supervision / validation maps), checked and cached.

A real segment's maps reach 330 Mpx each; read into every DataLoader worker they would multiply that by the
worker count. So each map is read and checked once per version (the cache name carries the source's name, size
and modification time, or a digest of a zarr folder's files), written band by band as an uncompressed ``.npy``
that the fragment then memory-maps like its slices. Reading goes through `datamodules.reading.map_reader` (every file
format and colour type); label rules are `datamodules.reading.label_rules`. The atomic ``.npy`` writer here also serves
the fragment's converted TIFF slices.

Caches, in the fragment's cache folder (``<role>`` is ``mask``, ``inklabels``, ``ignore``, ``supervision``,
``validation``):

- ``<role>.<stamp>.npy``: bool, for the binary maps (which must hold two values only);
- ``inklabels.<stamp>.<t…u…>.npy``: bool ink at the label threshold; ``inklabels.<stamp>.levels.npy``: uint8
  levels, only for grey labels; ``inklabels.<stamp>.unknown.npy``: the ``unknown`` level's pixels, when any;
  ``inklabels.<stamp>.json``: what the labels are (storage, binary or grey, levels seen);
- ``excluded.<…>.npy``: the pixels no loss or score counts (ignore map, unknown labels, outside supervision).
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from datamodules.reading.label_rules import LabelConfig, is_binary, to_levels
from datamodules.reading.map_reader import MapReader
from utils.atomic import TMP_SUFFIX, atomic_open, atomic_write_text

_BAND_ROWS = 1024  # rows per band when combining cached maps


def source_stamp(path: Path) -> str:
    """The version of a map source, for cache names: its name with a file's size and mtime, or a zarr's digest."""
    name = hashlib.sha1(path.name.encode()).hexdigest()[:6]
    if path.suffix == ".zarr":
        from datamodules.reading.volume_zarr import zarr_stamp

        return f"{name}z{zarr_stamp(path)}"
    stat = path.stat()
    return f"{name}-{stat.st_size}-{stat.st_mtime_ns}"


def _count_values(counts: np.ndarray, band: np.ndarray) -> np.ndarray:
    """``counts`` (by value) with a band's values added; counting levels is far faster than sorting them."""
    found = np.bincount(band.view(np.uint8).ravel() if band.dtype == bool else band.ravel(), minlength=len(counts))
    found[: len(counts)] += counts
    return found


def _check_binary(counts: np.ndarray, full: int, path: Path, what: str) -> None:
    values = set(np.flatnonzero(counts).tolist())
    if not is_binary(values, full):
        shown = sorted(values)[:8]
        raise ValueError(f"{what} '{path}' is not binary: values {shown}; expected 0/{full} or 0/1")


def read_binary_map(path: Path, shape: tuple[int, int], what: str) -> np.ndarray:
    """A whole binary map (mask, ignore map) as a bool array; for small maps and one-off reads.

    Raises:
        ValueError: unreadable, of another size, or holding more than two values.
    """
    with MapReader(path, shape, what) as reader:
        out = np.empty(shape, dtype=bool)
        counts = np.zeros(2, dtype=np.int64)
        for rows, band in reader.bands():
            counts = _count_values(counts, band)
            _check_binary(counts, reader.full, path, what)  # across bands: 0/255 and 0/1 bands do not mix
            out[rows] = band > 0
    return out


def _write_npy(
    target: Path, shape: tuple[int, int], dtype: str, fill: Callable[[np.ndarray], bool], *, keep_empty: bool = True
) -> bool:
    """Writes a ``.npy`` atomically, ``fill`` writing it band by band into a memory map.

    Returns:
        What ``fill`` returned (whether anything is set). With ``keep_empty=False`` a False result is not kept.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    temp = target.with_name(f".{target.name}.{secrets.token_hex(6)}{TMP_SUFFIX}")
    try:
        out = np.lib.format.open_memmap(temp, mode="w+", dtype=dtype, shape=shape)
        anything = fill(out)
        out.flush()
        del out
        if anything or keep_empty:
            os.replace(temp, target)
        return anything
    finally:
        temp.unlink(missing_ok=True)


def _remove_stale(cache_dir: Path, role: str, stamp: str) -> None:
    """Removes the caches of other versions of a role's source (the source changed since they were made)."""
    for old in cache_dir.glob(f"{role}.*"):
        if not old.name.startswith(f"{role}.{stamp}."):
            old.unlink(missing_ok=True)


def binary_cache(source: Path, cache_dir: Path, shape: tuple[int, int], role: str, what: str) -> Path:
    """The bool ``.npy`` copy of a binary map (mask, ignore, supervision or validation map), made once per version.

    Raises:
        ValueError: see `MapReader`; a map holding more than two values.
    """
    stamp = source_stamp(source)
    target = cache_dir / f"{role}.{stamp}.npy"
    if target.exists():
        return target
    _remove_stale(cache_dir, role, stamp)
    with MapReader(source, shape, what) as reader:

        def fill(out: np.ndarray) -> bool:
            counts = np.zeros(2, dtype=np.int64)
            for rows, band in reader.bands():
                counts = _count_values(counts, band)
                _check_binary(counts, reader.full, source, what)  # fails at the first band that breaks the rules
                out[rows] = band > 0
            return True

        _write_npy(target, shape, "bool", fill)
    return target


@dataclass(frozen=True)
class LabelFiles:
    """The caches of one label map.

    Attributes:
        ink: bool ink at the configured threshold.
        levels: uint8 levels 0..255 (grey labels only; None for binary ones, whose levels are ``ink * 255``).
        unknown: bool pixels at the ``unknown`` level, or None when there are none (or no such level is set).
        summary: a JSON file saying what the map is: ``file``, ``storage`` (format and colour type), ``kind``
            (``binary`` or ``grey``), ``levels`` (distinct levels seen), ``partial`` (fraction of pixels neither
            0 nor full).
    """

    ink: Path
    levels: Path | None
    unknown: Path | None
    summary: Path


def label_cache(source: Path, cache_dir: Path, shape: tuple[int, int], rules: LabelConfig) -> LabelFiles:
    """The caches of a label map under ``rules`` (see `datamodules.reading.label_rules`), made once per version.

    Two passes over the source: the first counts its values (binary or grey, and on which scale), the second
    writes the caches band by band.
    """
    stamp = source_stamp(source)
    names = {
        "ink": cache_dir / f"inklabels.{stamp}.{rules.key}.npy",
        "levels": cache_dir / f"inklabels.{stamp}.levels.npy",
        "unknown": cache_dir / f"inklabels.{stamp}.unknown{rules.unknown}.npy",
        "none": cache_dir / f"inklabels.{stamp}.unknown{rules.unknown}.none",
        "summary": cache_dir / f"inklabels.{stamp}.json",
    }
    if names["ink"].exists() and names["summary"].exists():
        summary = json.loads(names["summary"].read_text())
        levels = names["levels"] if summary["kind"] == "grey" else None
        unknown = names["unknown"] if names["unknown"].exists() else None
        if (levels is None or levels.exists()) and (rules.unknown is None or unknown or names["none"].exists()):
            return LabelFiles(names["ink"], levels, unknown, names["summary"])
    _remove_stale(cache_dir, "inklabels", stamp)
    with MapReader(source, shape, "ink labels") as reader:
        counts = np.zeros(2, dtype=np.int64)
        for _, band in reader.bands():
            counts = _count_values(counts, band)
        values = set(np.flatnonzero(counts).tolist())
        # The unknown level in the map's own values (None for bilevel maps, which have no third value).
        raw_unknown = None if rules.unknown is None or reader.full == 1 else rules.unknown * (reader.full // 255)
        binary = is_binary(values - {raw_unknown}, reader.full)
        full_count = counts[reader.full] if reader.full < len(counts) else 0
        partial = 0.0 if binary else 1.0 - float(counts[0] + full_count) / float(counts.sum())
        summary = {
            "file": source.name,
            "storage": reader.description,
            "kind": "binary" if binary else "grey",
            "levels": len(values),
            "partial": float(partial),
        }
        any_unknown = False

        def fill(ink: np.ndarray, levels_out: np.ndarray | None, unknown_out: np.ndarray | None) -> None:
            nonlocal any_unknown
            for rows, band in reader.bands():
                levels = to_levels(band, reader.full, binary)
                hard = levels >= rules.ink_level
                if raw_unknown is not None:
                    marked = band == raw_unknown
                    hard &= ~marked
                    if unknown_out is not None:
                        unknown_out[rows] = marked
                    any_unknown = any_unknown or bool(marked.any())
                ink[rows] = hard
                if levels_out is not None:
                    levels_out[rows] = levels

        _write_all(names, shape, binary, rules.unknown is not None, fill)
    if rules.unknown is not None and not any_unknown:
        names["unknown"].unlink(missing_ok=True)
        names["none"].touch()
    atomic_write_text(names["summary"], json.dumps(summary))
    return LabelFiles(
        names["ink"], None if binary else names["levels"], names["unknown"] if any_unknown else None, names["summary"]
    )


def _write_all(names: dict[str, Path], shape: tuple[int, int], binary: bool, unknown: bool, fill: Callable) -> None:
    """Writes the label caches in one pass: each into a temporary memory map, all renamed when complete."""
    cache_dir = names["ink"].parent
    cache_dir.mkdir(parents=True, exist_ok=True)
    wanted = {"ink": "bool"}
    if not binary:
        wanted["levels"] = "uint8"
    if unknown:
        wanted["unknown"] = "bool"
    temps = {k: cache_dir / f".{names[k].name}.{secrets.token_hex(6)}{TMP_SUFFIX}" for k in wanted}
    try:
        maps = {k: np.lib.format.open_memmap(temps[k], mode="w+", dtype=d, shape=shape) for k, d in wanted.items()}
        fill(maps["ink"], maps.get("levels"), maps.get("unknown"))
        for array in maps.values():
            array.flush()
        del maps
        for key in wanted:
            os.replace(temps[key], names[key])
    finally:
        for temp in temps.values():
            temp.unlink(missing_ok=True)


def excluded_cache(
    cache_dir: Path, shape: tuple[int, int], included: Sequence[Path], excluded: Sequence[Path]
) -> Path | None:
    """The bool cache of pixels no loss or score counts: set in any ``excluded`` map or unset in any ``included``.

    Built band by band from other caches (ignore map, unknown labels; supervision map). A ``.none`` marker records
    that these sources exclude nothing, so they are not combined again.

    Returns:
        The cache, or None when nothing is excluded.
    """
    if not included and not excluded:
        return None
    parts = [f"+{p.stem}" for p in included] + [f"-{p.stem}" for p in excluded]
    stamp = hashlib.sha1("|".join(parts).encode()).hexdigest()[:12]
    target = cache_dir / f"excluded.{stamp}.npy"
    none_marker = cache_dir / f"excluded.{stamp}.none"
    if none_marker.exists():
        return None
    if target.exists():
        return target
    _remove_stale(cache_dir, "excluded", stamp)
    sources_in = [np.load(p, mmap_mode="r") for p in included]
    sources_out = [np.load(p, mmap_mode="r") for p in excluded]

    def fill(out: np.ndarray) -> bool:
        anything = False
        for start in range(0, shape[0], _BAND_ROWS):
            rows = slice(start, min(start + _BAND_ROWS, shape[0]))
            band = np.zeros((rows.stop - rows.start, shape[1]), dtype=bool)
            for source in sources_in:
                band |= ~source[rows]
            for source in sources_out:
                band |= source[rows]
            out[rows] = band
            anything = anything or bool(band.any())
        return anything

    if _write_npy(target, shape, "bool", fill, keep_empty=False):
        return target
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
