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
    architecture = (ROOT / "docs" / "ARCHITECTURE.md").read_text()
    tree = architecture[architecture.index("## Project layout") : architecture.index("## Where to change what")]
    for folder in ("datamodules", "modules", "callbacks", "utils", "benchmarks", "lightning_app"):
        for source in sorted((ROOT / folder).rglob("*.py")):
            if source.name != "__init__.py":
                assert source.stem in tree, f"the layout tree does not mention {source.relative_to(ROOT)}"
        for package in sorted(p.parent for p in (ROOT / folder).rglob("__init__.py") if p.parent != ROOT / folder):
            assert f"{package.name}/" in tree, f"the layout tree does not mention {package.relative_to(ROOT)}/"


def test_the_readme_reads_in_five_minutes() -> None:
    assert len((ROOT / "README.md").read_text().splitlines()) <= 250


def test_every_sub_package_names_its_public_api() -> None:
    packages = [ROOT / name / "__init__.py" for name in ("datamodules", "modules", "callbacks")]
    for init in packages + sorted(ROOT.glob("*/*/__init__.py")):
        if init.parts[-3] in ("tests", ".venv") or init.parent.parent.name.startswith("."):
            continue
        text = init.read_text()
        assert "__all__" in text, f"{init.relative_to(ROOT)} does not name its public API in __all__"
