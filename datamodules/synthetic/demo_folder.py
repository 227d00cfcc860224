"""Where demo data may be written: only into a missing or empty folder, or one holding only demo fragments."""

from __future__ import annotations

from pathlib import Path

from datamodules.reading.fragment import discover_fragments

__all__ = ["check_demo_folder", "has_fragments"]


def has_fragments(folder: Path) -> bool:
    """Whether ``folder`` exists and holds at least one fragment."""
    try:
        return bool(discover_fragments(folder))
    except FileNotFoundError:
        return False


def check_demo_folder(folder: Path, num_fragments: int) -> None:
    """Refuses to write demo fragments into a folder that is not the demo's (missing, empty, or only demo names).

    Raises:
        FileNotFoundError: ``folder`` holds other things but no fragment, naming what a fragment folder must hold.
    """
    if not folder.is_dir():
        return
    demo_names = {f"frag{i}" for i in range(1, num_fragments + 1)}
    others = sorted(p.name for p in folder.iterdir() if p.name not in demo_names)
    if not others:
        return
    try:
        discover_fragments(folder)
    except FileNotFoundError as err:
        raise FileNotFoundError(
            f"{err}; demo data is written only into an empty folder or the demo's own, and this one holds {others[:5]}"
        ) from None
