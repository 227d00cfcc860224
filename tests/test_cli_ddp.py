"""The scripts under DDP on CPU: 2 processes train, test and validate as 1 does.

LightningCLI's DDP launcher starts the other ranks by re-running ``sys.argv``, which cannot work from inside pytest,
so each run is a ``scripts/*.py`` subprocess (in its own process group, killed whole on a timeout: a rank waiting in
a collective that another rank skipped would otherwise hang forever).
"""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_cli import BATCH_SIZE, REPO, SAMPLES_PER_EPOCH, make_data, write_config
from utils.checkpoints import load_checkpoint

pytestmark = pytest.mark.slow

WORLD_SIZE = 2
# Whole-fragment scores come from the stitched maps summed over ranks, so they do not depend on the process count.
# val/loss does: it is a mean of per-batch losses (Dice is not additive over batches) and the batches differ.
RANK_FREE_METRICS = ("val/f05", "val/f05_best", "val/threshold", "val/ap")
_DIST_ENV = ("MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE", "RANK", "LOCAL_RANK", "NODE_RANK", "LOCAL_WORLD_SIZE")


def run_script(script: str, *args: str, cwd: Path, timeout: float = 90) -> str:
    """Runs ``scripts/<script>``; returns its output, failing the test on a non-zero exit or a hang."""
    env = {k: v for k, v in os.environ.items() if k not in _DIST_ENV and k != "INK_DEBUG"}
    env["OMP_NUM_THREADS"] = "1"  # two ranks share the CI machine's cores
    command = [sys.executable, str(REPO / "scripts" / script), *args]
    proc = subprocess.Popen(
        command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # Lightning traps SIGTERM; the other rank is in the same group
        out, _ = proc.communicate()
        pytest.fail(f"{script} did not finish in {timeout} s (a rank stuck in a collective?); output:\n{out[-4000:]}")
    assert proc.returncode == 0, f"{' '.join(command)} exited {proc.returncode}:\n{out[-4000:]}"
    return out


def logged(metrics_csv: Path) -> list[dict[str, float]]:
    """The non-empty values of each row of a CSVLogger ``metrics.csv``."""
    with open(metrics_csv, newline="") as f:
        return [{k: float(v) for k, v in row.items() if v != ""} for row in csv.DictReader(f)]


def run_folder(root: Path) -> Path:
    (folder,) = (root / "runs" / "ink").iterdir()
    return folder


@pytest.fixture(scope="module")
def ddp_fit(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``scripts/fit.py`` for 2 epochs on 2 CPU processes with the default callbacks; returns its run folder."""
    root = tmp_path_factory.mktemp("ddp")
    config = write_config(root, make_data(root / "data"), logger="CSVLogger")
    ddp = ["--accelerator", "cpu", "--devices", str(WORLD_SIZE), "--strategy", "ddp"]
    run_script("fit.py", "--config", str(config), *ddp, cwd=root)
    return run_folder(root)


def test_ddp_fit_trains_checkpoints_and_tests(ddp_fit: Path) -> None:
    checkpoints = sorted(p.name for p in (ddp_fit / "checkpoints").iterdir())
    assert len(checkpoints) == 2 and "last.ckpt" in checkpoints, checkpoints
    last = load_checkpoint(ddp_fit / "checkpoints" / "last.ckpt")
    # Each rank draws its share of samples_per_epoch, so an epoch is half as many steps.
    steps_per_epoch = SAMPLES_PER_EPOCH // WORLD_SIZE // BATCH_SIZE
    assert (last["epoch"], last["global_step"]) == (1, 2 * steps_per_epoch)
    assert (ddp_fit / "config.yaml").is_file()
    rows = logged(ddp_fit / "metrics.csv")
    assert len([r for r in rows if "val/f05" in r]) == 2
    assert any("test/f05" in r for r in rows)  # the best checkpoint was tested after fitting, under DDP too
    assert not [p for p in ddp_fit.rglob("*") if p.name.endswith(".tmp")]


def run_from_checkpoint(run: Path, script: str, devices: int, root: Path, *args: str) -> Path:
    """Runs ``script`` with the DDP run's config and last checkpoint on ``devices`` CPU processes, in ``root``."""
    root.mkdir()
    ddp = ["--strategy", "ddp"] if devices > 1 else []
    config, ckpt = run / "config.yaml", run / "checkpoints" / "last.ckpt"
    run_script(
        script,
        *("--config", str(config), "--ckpt_path", str(ckpt), "--devices", str(devices), *ddp),
        *("--trainer.logger.init_args.save_dir", str(root / "runs")),
        *args,
        cwd=root,
    )
    return root


def test_validation_scores_are_identical_on_1_and_2_processes(ddp_fit: Path, tmp_path: Path) -> None:
    scores = {}
    for devices in (1, WORLD_SIZE):
        root = run_from_checkpoint(ddp_fit, "validate.py", devices, tmp_path / f"devices{devices}")
        (row,) = [r for r in logged(run_folder(root) / "metrics.csv") if "val/f05" in r]
        scores[devices] = {name: row[name] for name in RANK_FREE_METRICS}
    for name in RANK_FREE_METRICS:
        assert scores[WORLD_SIZE][name] == pytest.approx(scores[1][name], abs=1e-6), (name, scores)


def test_prediction_on_2_processes_equals_1_process(ddp_fit: Path, tmp_path: Path) -> None:
    """Bands are shared out between the ranks (each writes its own); the outputs are those of one process."""
    outputs = {}
    for devices in (1, WORLD_SIZE):
        out = tmp_path / f"devices{devices}" / "pred"
        writer = ("--prediction_writer.output_dir", str(out), "--prediction_writer.band_pixels", "2048")
        run_from_checkpoint(ddp_fit, "predict.py", devices, tmp_path / f"devices{devices}", *writer)
        outputs[devices] = {p.name: p.read_bytes() for p in sorted(out.iterdir())}
    names = sorted(outputs[1])
    assert any(n.endswith("_prediction.tif") for n in names) and "submission.csv" in names
    assert sorted(outputs[WORLD_SIZE]) == names
    for name in names:
        assert outputs[WORLD_SIZE][name] == outputs[1][name], name
