"""README and docs/: every project file they name exists, and none points outside the repository."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
TOP_LEVEL = ("lightning_app", "datamodules", "modules", "callbacks", "utils", "benchmarks", "scripts", "tests", "docs")
# A project path in backticks, e.g. `modules/losses.py` or `lightning_app/configs/cpu.yaml` (no placeholders).
PATH = re.compile(r"`((?:{})/[\w./-]+)`".format("|".join(TOP_LEVEL)))


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_named_project_files_exist(doc: Path) -> None:
    named = {m.group(1).split("::")[0].rstrip("/.") for m in PATH.finditer(doc.read_text())}
    assert named, f"{doc.name} names no project file at all; is the pattern still right?"
    missing = sorted(p for p in named if not (ROOT / p).exists())
    assert not missing, f"{doc.name} names files that do not exist: {missing}"


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_nothing_points_outside_the_repository(doc: Path) -> None:
    text = doc.read_text()
    assert "../" not in text, f"{doc.name} points outside the repository"
    assert "DESIGN.md" not in text, f"{doc.name} refers to a design page that is not part of the repository"


def test_the_layout_tree_lists_every_source_file() -> None:
    readme = (ROOT / "README.md").read_text()
    tree = readme[readme.index("## Project layout") : readme.index("### Where to change what")]
    for folder in ("datamodules", "modules", "callbacks", "utils", "benchmarks"):
        for source in sorted((ROOT / folder).glob("*.py")):
            if source.name != "__init__.py":
                assert source.stem in tree, f"README's layout tree does not mention {folder}/{source.name}"
