"""Where a fragment's files are: the layouts the community publishes and trains from, or a manifest naming them.

A fragment (scroll segment) folder is named by its id (``frag1``, ``20230530164535``) and holds a volume and 2-D
maps, each found under any of the names in use, without renaming anything:

==============  =====================================================================================
role            names tried (``<id>`` is the folder's name; ``.png``, ``.tif``, ``.tiff`` or ``.zarr``)
==============  =====================================================================================
volume          ``surface_volume/`` or ``layers/`` (numbered TIFF slices), ``surface_volume.zarr``,
                ``layers.zarr``, ``surface-volume.zarr``, ``<id>.zarr``, or a ``.url`` file
mask            ``mask``, ``<id>_mask``: the papyrus; none means every pixel counts as papyrus
inklabels       ``inklabels``, ``<id>_inklabels``, ``<id>_inklabels_v<N>``
ignore          ``ignore``, ``<id>_ignore``: pixels left out of loss and scores
supervision     ``supervision_mask``, ``<id>_supervision_mask[_v<N>]``: where labels are trusted (loss and
                scores count only inside it)
validation      ``validation_mask``, ``<id>_validation_mask[_v<N>]``: the region of the segment that validates
                (it never trains)
==============  =====================================================================================

A folder named ``<id>_<anything>`` (the Grand Prize code's ``<id>_superseded``) also finds files named for ``<id>``.
Versions follow the challenge's monorepo: a name without ``_v<N>`` is version 1 and the highest version of each
role wins on its own (the choice is noted). Two names of one role that are not versions of each other
(``mask.png`` and ``<id>_mask.png``), or two files of one version (``x_inklabels.png`` and ``x_inklabels.tif``),
are an error naming both. Anything else is described by a manifest (`read_manifest`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from jsonargparse.typing import register_type

from datamodules.reading.map_reader import MAP_SUFFIXES
from datamodules.reading.volume_tiff import SLICE_DIRS

ROLES = ("mask", "inklabels", "ignore", "supervision", "validation")


class FragmentId(str):
    """A fragment id as the command line and configs type it: segment ids are numbers (``20230530164535``), which
    YAML reads as integers; this type takes them as their digits, so configs and checkpoints hold strings. (YAML
    reads a number with leading zeros, ``0123``, as octal: quote such ids.)"""


def _fragment_id(value: object) -> FragmentId:
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise ValueError(f"fragment id {value!r} must be a string or an integer (quote it)")
    return FragmentId(str(value))


register_type(FragmentId, serializer=str, deserializer=_fragment_id)


def fragment_ids(ids: Sequence[str | int] | str | int | None) -> list[str] | None:
    """Fragment ids as plain strings, however they were typed (numbers from Python, YAML or the command line).

    Raises:
        ValueError: an id that is neither a string nor an integer (a float would have lost digits).
    """
    if ids is None:
        return None
    return [str(_fragment_id(value)) for value in ([ids] if isinstance(ids, (str, int)) else ids)]


_ROLE_STEMS = {
    "mask": "mask",
    "inklabels": "inklabels",
    "ignore": "ignore",
    "supervision": "supervision_mask",
    "validation": "validation_mask",
}
_VERSIONED = ("inklabels", "supervision", "validation")
MANIFEST_SUFFIXES = (".yaml", ".yml", ".json")
_MANIFEST_KEYS = ("id", "folder", "volume", "cache", *ROLES)


@dataclass(frozen=True)
class FragmentSources:
    """The files of one fragment.

    Attributes:
        id: the fragment's id (a string, also when it is a number).
        path: the fragment folder (for a manifest entry without one, the volume).
        volume: the slice folder, ``.zarr`` folder or ``.url`` file.
        maps: role -> file, for the roles present (see `ROLES`).
        cache_dir: where the fragment's caches go by default.
        layout: ``kaggle`` (plain names), ``segment`` (``<id>_`` names), ``mixed``, ``no maps`` or ``manifest``.
        notes: what discovery chose and why (versions seen, files naming another id).
    """

    id: str
    path: Path
    volume: Path
    maps: Mapping[str, Path] = field(default_factory=dict)
    cache_dir: Path | None = None
    layout: str = "kaggle"
    notes: tuple[str, ...] = ()


def volume_candidates(fragment_dir: Path) -> list[Path]:
    """Every volume a fragment folder holds: slice folders, ``.zarr`` folders and ``.url`` files."""
    found = []
    for name in SLICE_DIRS:
        for path, ok in (
            (fragment_dir / name, Path.is_dir),
            (fragment_dir / f"{name}.zarr", Path.is_dir),
            (fragment_dir / f"{name}.url", Path.is_file),
        ):
            if ok(path):
                found.append(path)
    for path in (fragment_dir / "surface-volume.zarr", fragment_dir / f"{fragment_dir.name}.zarr"):
        if path.is_dir():
            found.append(path)
    return found


def find_volume(fragment_dir: Path) -> Path | None:
    """The fragment's volume (see the module's table), or None if none.

    Raises:
        ValueError: the folder holds more than one volume.
    """
    found = volume_candidates(fragment_dir)
    if len(found) > 1:
        raise ValueError(
            f"fragment '{fragment_dir}' holds {len(found)} volumes ({', '.join(p.name for p in found)}): keep one"
        )
    return found[0] if found else None


_SUFFIXES = "|".join(s.lstrip(".") for s in MAP_SUFFIXES)
# [<prefix>_]<stem>[_v<N>].<suffix>, per role: the prefix is checked against the id, the version compared.
_PATTERNS = {
    role: re.compile(rf"^(?:(?P<prefix>.+)_)?{stem}(?:_v(?P<version>\d+))?\.(?:{_SUFFIXES})$", re.IGNORECASE)
    for role, stem in _ROLE_STEMS.items()
}


def find_maps(fragment_dir: Path, fragment_id: str | None = None) -> tuple[dict[str, Path], list[str], str]:
    """The maps of a fragment folder by role, the notes on the choices made, and the naming layout.

    Raises:
        ValueError: two candidates for one role, naming both.
    """
    fragment_id = fragment_id or fragment_dir.name
    names = sorted(p.name for p in fragment_dir.iterdir()) if fragment_dir.is_dir() else []
    maps: dict[str, Path] = {}
    notes: list[str] = []
    styles: set[str] = set()
    for role in ROLES:
        pattern = _PATTERNS[role]
        by_version: dict[tuple[str, int], list[str]] = {}
        for name in names:
            match = pattern.match(name)
            if not match:
                continue
            prefix, version = match.group("prefix"), match.group("version")
            # "<id>_superseded" and other suffixed folders keep the segment's own file names (the Grand Prize code).
            if prefix is not None and prefix != fragment_id and not fragment_id.startswith(f"{prefix}_"):
                # "x_supervision_mask" also matches "mask", and "x_flat_mask" is a derived image: not this role
                if "_" not in prefix and prefix.lower() not in ("supervision", "validation"):
                    notes.append(f"{role}: '{name}' names another id than '{fragment_id}': not used")
                continue
            if version is not None and role not in _VERSIONED:
                continue
            family = "plain" if prefix is None else "segment"
            by_version.setdefault((family, int(version) if version else 1), []).append(name)
        if not by_version:
            continue
        families = sorted({family for family, _ in by_version})
        if len(families) > 1:
            shown = [by_version[k][0] for k in sorted(by_version)]
            raise ValueError(
                f"fragment '{fragment_dir}' has two {role} files of different naming: {' and '.join(shown)}; "
                "keep one, or name the one to use in a manifest"
            )
        newest = max(by_version)
        if len(by_version[newest]) > 1:
            first, second = by_version[newest][:2]
            raise ValueError(
                f"'{fragment_dir}' holds both {first} and {second} ({role}, version {newest[1]}): keep one"
            )
        maps[role] = fragment_dir / by_version[newest][0]
        styles.add(newest[0])
        if len(by_version) > 1:
            seen = ", ".join(f"v{v}" for _, v in sorted(by_version))
            notes.append(f"{role}: {maps[role].name} (newest of {seen})")
    layout = "mixed" if len(styles) > 1 else "segment" if styles == {"segment"} else "kaggle" if styles else "no maps"
    return maps, notes, layout


def find_sources(fragment_dir: str | Path) -> FragmentSources:
    """The files of the fragment folder ``fragment_dir``.

    Raises:
        FileNotFoundError: the folder holds no volume.
        ValueError: it holds two volumes or two candidates for one map role.
    """
    fragment_dir = Path(fragment_dir)
    volume = find_volume(fragment_dir)
    if volume is None:
        raise FileNotFoundError(
            f"fragment '{fragment_dir}' has no {' or '.join(SLICE_DIRS)} folder "
            f"(nor {' or '.join(s + '.zarr' for s in SLICE_DIRS)}, surface-volume.zarr, <id>.zarr, "
            "nor a .url file naming one)"
        )
    maps, notes, layout = find_maps(fragment_dir)
    return FragmentSources(
        id=fragment_dir.name,
        path=fragment_dir,
        volume=volume,
        maps=maps,
        cache_dir=fragment_dir / ".ink_cache",
        layout=layout,
        notes=tuple(notes),
    )


def is_manifest(path: str | Path) -> bool:
    """Whether ``path`` names a manifest file (``.yaml``, ``.yml`` or ``.json``) rather than a folder."""
    path = Path(path)
    return path.suffix.lower() in MANIFEST_SUFFIXES and not path.is_dir()


def read_manifest(path: str | Path) -> list[FragmentSources]:
    """The fragments a manifest lists, each with its files named explicitly.

    A manifest is YAML (or JSON) of the form::

        fragments:
          - id: 20230530164535                 # optional with folder: the folder's name
            folder: segments/20230530164535     # optional: discover the folder, then apply the keys below
            volume: segments/20230530164535/layers
            mask: segments/20230530164535/20230530164535_mask.png
            inklabels: labels/20230530164535_inklabels.png
            ignore: …                           # also supervision, validation
            cache: caches/20230530164535        # optional; default <folder>/.ink_cache or
                                                # <manifest folder>/.ink_cache/<id>

    Relative paths are relative to the manifest's folder. A named file must exist.

    Raises:
        ValueError / FileNotFoundError: a malformed manifest, an unknown key, a duplicate id or a missing file,
            naming the manifest and the entry.
    """
    path = Path(path)
    try:
        document = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"manifest '{path}' does not exist") from None
    except (OSError, yaml.YAMLError) as err:
        raise ValueError(f"manifest '{path}' cannot be read: {err}") from err
    entries = document.get("fragments") if isinstance(document, dict) else None
    if not isinstance(entries, list) or not entries:
        raise ValueError(f"manifest '{path}' must hold 'fragments:', a non-empty list of entries")
    base = path.parent
    out: list[FragmentSources] = []
    for number, entry in enumerate(entries, 1):
        where = f"manifest '{path}', entry {number}"
        if not isinstance(entry, dict):
            raise ValueError(f"{where}: expected a mapping of {', '.join(_MANIFEST_KEYS)}")
        unknown = sorted(set(map(str, entry)) - set(_MANIFEST_KEYS))
        if unknown:
            raise ValueError(f"{where}: unknown key(s) {unknown}; expected {', '.join(_MANIFEST_KEYS)}")
        files = {k: _resolve(base, v, f"{where} {k}") for k, v in entry.items() if k not in ("id", "cache")}
        folder, volume = files.pop("folder", None), files.pop("volume", None)
        found_maps: dict[str, Path] = {}
        notes: list[str] = []
        if folder is not None:
            found_maps, notes, _ = find_maps(folder)
            volume = volume or find_volume(folder)
        if volume is None:
            raise ValueError(f"{where}: give 'volume' (or a 'folder' holding one)")
        if "id" not in entry and folder is None:
            raise ValueError(f"{where}: give 'id' (or a 'folder', whose name is the id)")
        try:
            fragment_id = str(_fragment_id(entry["id"])) if "id" in entry else folder.name
        except ValueError as err:
            raise ValueError(f"{where}: {err}") from None
        if not fragment_id:
            raise ValueError(f"{where}: the id is empty")
        if any(s.id == fragment_id for s in out):
            raise ValueError(f"manifest '{path}': id '{fragment_id}' is listed twice")
        cache = entry.get("cache")
        if cache is not None:
            cache_dir = base / str(cache)
        elif folder is not None:
            cache_dir = folder / ".ink_cache"
        else:
            cache_dir = base / ".ink_cache" / fragment_id
        out.append(
            FragmentSources(
                id=fragment_id,
                path=folder if folder is not None else volume,
                volume=volume,
                maps={**found_maps, **files},
                cache_dir=cache_dir,
                layout="manifest",
                notes=tuple(notes),
            )
        )
    return out


def _resolve(base: Path, value: object, where: str) -> Path:
    if not isinstance(value, str) or not value:
        raise ValueError(f"{where}: expected a path, got {value!r}")
    path = base / value
    if not path.exists():
        raise FileNotFoundError(f"{where}: '{path}' does not exist")
    return path


def discover_sources(data_dir: str | Path) -> list[FragmentSources]:
    """The fragments of ``data_dir``: a folder of fragment folders (sorted by name) or a manifest file.

    Raises:
        FileNotFoundError: ``data_dir`` does not exist or holds no fragment.
        ValueError: a fragment folder holds two volumes or two candidates for one map role.
    """
    root = Path(data_dir)
    if is_manifest(root):
        return read_manifest(root)
    return [find_sources(p) for p in discover_fragments(root)]


def discover_fragments(data_dir: str | Path) -> list[Path]:
    """Lists the fragment folders under ``data_dir``, sorted by name.

    Raises:
        FileNotFoundError: ``data_dir`` does not exist or holds no fragment.
    """
    root = Path(data_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"data_dir '{root}' does not exist or is not a folder (nor a .yaml/.json manifest)")
    found = sorted(p for p in root.iterdir() if p.is_dir() and volume_candidates(p))
    if not found:
        raise FileNotFoundError(
            f"no fragment found in data_dir '{root}': expected sub-folders holding "
            f"{' or '.join(s + '/' for s in SLICE_DIRS)} with numbered .tif slices, "
            f"{' or '.join(s + '.zarr' for s in SLICE_DIRS)}, or {' or '.join(s + '.url' for s in SLICE_DIRS)}"
        )
    return found
