"""The main job's config learns: a shortened demo run beats predicting ink everywhere by a clear margin.

Three epochs of 256² fragments (about 75 s): test F0.5 0.77 against 0.16 for predicting ink everywhere (seed 0).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from lightning_app.cli import CPU_CONFIG, DEMO_CONFIG, cli_main
from tests.conftest import f05_of_predicting_ink_everywhere


@pytest.mark.slow
def test_demo_config_learns(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(tmp_path)
    cli = cli_main(
        [
            "fit",
            "--config",
            str(CPU_CONFIG),
            "--config",
            str(DEMO_CONFIG),
            "--data.demo_size",
            "256",
            "--data.folds",
            "4",
            "--data.val_fold",
            "3",
            "--max_epochs",
            "3",
            "--disable_callbacks",
            "[cam, early_stopping]",
            "--trainer.enable_progress_bar",
            "false",
            "--trainer.enable_model_summary",
            "false",
        ]
    )
    baseline = f05_of_predicting_ink_everywhere(tmp_path / "data" / "demo" / "frag3")
    score = cli.test_results["test/f05"]
    assert 0.05 < baseline < 0.3
    assert score > baseline + 0.25, f"demo test F0.5 {score:.3f} vs all-ink {baseline:.3f}"
    assert (tmp_path / "runs" / "ink" / "version_0" / "config.yaml").exists()
