"""Packaging: ``lightning_app`` is this repository's package, never the third-party ``lightning-app``."""

from __future__ import annotations

import importlib.metadata
import re
from pathlib import Path

import pytest

import lightning_app

REPO = Path(__file__).resolve().parents[1]


def requirements() -> dict[str, str]:
    """``{normalised name: specifier}`` of requirements.txt."""
    found = {}
    for line in (REPO / "requirements.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        match = re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(\[[^\]]*\])?\s*(.*)$", line)
        assert match, f"requirements.txt: cannot read {line!r}"
        found[re.sub(r"[-_.]+", "-", match.group(1)).lower()] = match.group(3).replace(" ", "")
    return found


def test_lightning_app_is_this_repository() -> None:
    assert Path(lightning_app.__file__).resolve().parent == REPO / "lightning_app"
    from lightning_app.cli import InkCLI  # the module the third-party package does not have

    assert InkCLI.__module__ == "lightning_app.cli"


@pytest.mark.parametrize("name", ["lightning-app", "lightning_app"])
def test_third_party_lightning_app_is_not_installed(name: str) -> None:
    with pytest.raises(importlib.metadata.PackageNotFoundError):
        importlib.metadata.distribution(name)
    # Nor does any other installed distribution ship a top-level `lightning_app` package (this project may).
    providers = set(importlib.metadata.packages_distributions().get("lightning_app", []))
    assert providers <= {"ink-detection"}, providers


def test_requirements_pin_torch_and_leave_out_lightning_app() -> None:
    pins = requirements()
    assert pins["torch"] == "==2.14.1"
    assert pins["torchvision"] == "==0.29.1"
    assert "lightning-app" not in pins
    assert "pytorch-lightning" in pins


def test_installed_torch_matches_the_pins() -> None:
    for name, pinned in (("torch", "2.14.1"), ("torchvision", "0.29.1")):
        assert importlib.metadata.version(name).split("+")[0] == pinned, name


def test_packages_export_lazily_and_name_what_they_lack() -> None:
    import callbacks
    import datamodules
    import modules
    from callbacks.prediction_writer import InkPredictionWriter
    from datamodules.ink_datamodule import InkDataModule
    from modules.ink_module import InkModule

    assert (datamodules.InkDataModule, modules.InkModule, callbacks.InkPredictionWriter) == (
        InkDataModule,
        InkModule,
        InkPredictionWriter,
    )
    with pytest.raises(AttributeError, match="module 'datamodules' has no attribute 'Nope'"):
        datamodules.Nope  # noqa: B018
