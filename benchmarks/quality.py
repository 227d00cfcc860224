"""Quality benchmark: the project's default recipe against the plain baseline loop, on held-out data.

Both sides train on the same two fragments of the held-out family (`benchmarks.heldout_family`, written apart
from the project's own generator and never used to choose defaults) for the same wall-clock budget, pick a
threshold on a third fragment, and are scored on a fourth:

- test F0.5 at the threshold chosen on the validation fragment, and at 0.5;
- test average precision (threshold-free);
- the same for "predict ink everywhere", the floor both must clear.

The project runs exactly as a user runs it: ``scripts/fit.py`` with no ``--config`` (the CPU recipe), the data
folder, the fragment lists and ``--trainer.max_time``. Each run is a fresh process so no state leaks between
runs. Usage: ``python scripts/benchmark.py --quality [--seeds 0 1 2] [--budget 480]``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
TRAIN, VAL, TEST = ("hA", "hB"), "hC", "hD"


def ensure_heldout(work: Path, size: int, ink_to_noise: float, seed: int = 2024) -> Path:
    """The four held-out fragments under ``work`` (made once, then reused)."""
    from benchmarks.heldout_family import make_heldout_set

    folder = work / f"heldout_{size}_{ink_to_noise:g}_{seed}"
    ids = (*TRAIN, VAL, TEST)
    if not all((folder / i / "inklabels.png").is_file() for i in ids):
        make_heldout_set(folder, ids=ids, size=size, seed=seed, ink_to_noise=ink_to_noise)
    return folder


def _scores(val: dict[str, np.ndarray], test: dict[str, np.ndarray]) -> dict[str, float]:
    from modules.evaluation.metrics import fbeta_at, fragment_scores

    threshold = fragment_scores(val["prob"], val["label"], val["valid"])["threshold"]
    at_half = fragment_scores(test["prob"], test["label"], test["valid"], threshold=0.5)
    return {
        "f05_val_threshold": fbeta_at(test["prob"], test["label"], test["valid"], threshold),
        "f05_at_0.5": at_half["f05"],
        "ap": at_half["ap"],
        "val_threshold": threshold,
    }


def run_baseline(data: Path, seed: int, budget_s: float) -> dict[str, Any]:
    """The plain loop: train on TRAIN for ``budget_s``, threshold on VAL, score TEST."""
    from benchmarks.baseline_loop import train_and_predict

    info: dict[str, float] = {}
    maps = train_and_predict(data, TRAIN, (VAL, TEST), seed=seed, budget_s=budget_s, info=info)
    return {**_scores(maps[VAL], maps[TEST]), "steps": info.get("steps"), "final_loss": info.get("final_loss")}


def run_project(data: Path, seed: int, budget_s: float, out: Path, extra: list[str]) -> dict[str, Any]:
    """``scripts/fit.py`` with the default recipe and a time budget; scores from the tested best checkpoint."""
    from lightning_app.cli import cli_main

    minutes, seconds = divmod(int(budget_s), 60)
    args = [
        "fit",
        "--data.data_dir", str(data),
        "--data.splits.train_fragments", f"[{', '.join(TRAIN)}]",
        "--data.splits.val_fragments", f"[{VAL}]",
        "--data.splits.test_fragments", f"[{TEST}]",
        "--trainer.max_time", f"00:00:{minutes:02d}:{seconds:02d}",
        "--max_epochs", "-1",
        "--seed_everything", str(seed),
        "--trainer.logger.init_args.save_dir", str(out),
        "--trainer.enable_progress_bar", "false",
        *extra,
    ]  # fmt: skip
    cli = cli_main(args)
    results = getattr(cli, "test_results", {})
    module = cli.model
    maps = module.last_eval_maps[TEST]
    threshold = module.val_threshold if module.val_threshold is not None else 0.5
    from modules.evaluation.metrics import fbeta_at

    return {
        "f05_val_threshold": fbeta_at(maps["prob"], maps["label"], maps["valid"], threshold),
        "f05_at_0.5": float(results.get("test/f05", float("nan"))),
        "ap": float(results.get("test/ap", float("nan"))),
        "val_threshold": threshold,
        "steps": int(cli.trainer.global_step),
        "epochs": int(cli.trainer.current_epoch),
    }


def all_ink_scores(data: Path) -> dict[str, float]:
    """Predicting ink everywhere on TEST: the floor."""
    from datamodules.reading.fragment import Fragment
    from modules.evaluation.metrics import fragment_scores

    fragment = Fragment(data / TEST)
    labels, valid = np.asarray(fragment.labels), np.asarray(fragment.mask)
    scores = fragment_scores(np.ones(labels.shape, np.float32), labels, valid, threshold=0.5)
    return {"f05_val_threshold": scores["f05"], "f05_at_0.5": scores["f05"], "ap": float(labels[valid].mean())}


def child(kind: str, data: str, seed: int, budget_s: float, out: str, extra: list[str]) -> dict[str, Any]:
    """One run in this (fresh) process."""
    started = time.perf_counter()
    if kind == "baseline":
        result = run_baseline(Path(data), seed, budget_s)
    else:
        result = run_project(Path(data), seed, budget_s, Path(out), extra)
    return {**result, "wall_s": time.perf_counter() - started}


def run_in_process(kind: str, data: Path, seed: int, budget_s: float, out: Path, extra: list[str]) -> dict[str, Any]:
    """Runs `child` in a fresh Python process and returns its JSON result."""
    spec = {"kind": kind, "data": str(data), "seed": seed, "budget_s": budget_s, "out": str(out), "extra": extra}
    return run_module_child("benchmarks.quality", spec)


def run_module_child(module: str, spec: dict[str, Any]) -> dict[str, Any]:
    """Runs ``python -m module '<spec as JSON>'`` in a fresh process; returns the JSON its last stdout line holds.

    Raises:
        RuntimeError: the process failed, naming the spec's ``kind`` and ``seed`` and quoting its stderr's end.
    """
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-m", module, json.dumps(spec)], cwd=ROOT, env=env, capture_output=True, text=True
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{spec.get('kind')} run (seed {spec.get('seed')}) failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def summarise(rows: list[dict[str, Any]]) -> str:
    """A markdown table: mean ± std over seeds of each side's scores."""
    lines = [
        "| recipe | test F0.5 @ val threshold | test F0.5 @ 0.5 | test AP | steps |",
        "|---|---|---|---|---|",
    ]
    for kind in dict.fromkeys(r["kind"] for r in rows):
        runs = [r for r in rows if r["kind"] == kind]

        def stat(key: str, runs: list[dict[str, Any]] = runs, digits: int = 3) -> str:
            values = np.array([float(r[key]) for r in runs if r.get(key) is not None], dtype=float)
            if values.size == 0:
                return "-"
            if values.size == 1:
                return f"{values[0]:.{digits}f}"
            return f"{values.mean():.{digits}f} ± {values.std():.{digits}f}"

        seeds = [r["seed"] for r in runs if "seed" in r]
        label = f"{kind} ({len(seeds)} seed{'s' * (len(seeds) > 1)})" if seeds else kind
        steps = stat("steps", digits=0)
        lines.append(f"| {label} | {stat('f05_val_threshold')} | {stat('f05_at_0.5')} | {stat('ap')} | {steps} |")
    by_seed = {(r["kind"], r["seed"]): r for r in rows if "seed" in r}
    paired = [
        by_seed[("project", seed)]["f05_val_threshold"] - by_seed[("baseline", seed)]["f05_val_threshold"]
        for kind, seed in by_seed
        if kind == "project" and ("baseline", seed) in by_seed
    ]
    if paired:
        diffs = np.array(paired, dtype=float)
        lines.append(
            f"\nproject - baseline, test F0.5 at the validation threshold, paired by seed: {diffs.mean():+.3f} "
            f"(per seed {', '.join(f'{d:+.3f}' for d in diffs)})"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    spec = json.loads(sys.argv[1])
    print(json.dumps(child(**spec)))
