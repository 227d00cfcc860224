"""Label-round benchmark: does a round of pseudo-labels beat training longer on the labels alone?

On the held-out family (`benchmarks.heldout_family`, never used to choose defaults), labels are scarce and
unlabelled segments plentiful: one small labelled fragment trains, a second small one validates (threshold and
checkpoint), an unseen fragment tests, and ``UNLABELLED`` segments have no labels at all. Per seed, two runs with
the same total training time:

- **round 0, matched**: ``scripts/fit.py`` on the labelled fragment for ``2 × budget`` seconds;
- **rounds**: ``scripts/label_rounds.py --rounds 1`` (round 0 for ``budget`` s, pseudo-labels of the unlabelled
  segments from its best checkpoint, round 1 on labelled + pseudo-labelled for ``budget`` s from round 0's
  weights). Pseudo-labelling's prediction time is reported apart; it is not training time.

Scored on the test fragment: F0.5 at the threshold chosen on the validation fragment. Each run is a fresh process.
Usage: ``python scripts/benchmark.py --pseudo [--seeds 0 1 2] [--budget 120]``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
LABELLED, VAL, TEST = "pL", "pV", "pT"
UNLABELLED = ("pU1", "pU2", "pU3")


def ensure_data(work: Path, small: int, size: int, ink_to_noise: float, seed: int = 2025) -> tuple[Path, Path]:
    """The labelled folder (train, validation and test fragments) and the unlabelled one (made once)."""
    from benchmarks.heldout_family import make_heldout_fragment

    root = work / f"pseudo_{small}_{size}_{ink_to_noise:g}_{seed}"
    labelled, unlabelled = root / "labelled", root / "unlabelled"
    plan = [(labelled, LABELLED, small), (labelled, VAL, small), (labelled, TEST, size)]
    plan += [(unlabelled, fid, size) for fid in UNLABELLED]
    for index, (folder, fid, edge) in enumerate(plan):
        target = folder / fid
        if (target / "mask.png").is_file():
            continue
        fragment_seed = int(np.random.SeedSequence([seed, index]).generate_state(1)[0])
        make_heldout_fragment(target, height=edge, width=edge, seed=fragment_seed, ink_to_noise=ink_to_noise)
        if folder == unlabelled:
            (target / "inklabels.png").unlink()  # unlabelled: the benchmark never sees their ink
    return labelled, unlabelled


def _fit_args(labelled: Path, seed: int, seconds: float, extra: list[str]) -> list[str]:
    minutes, rest = divmod(int(seconds), 60)
    return [
        "--data.data_dir", str(labelled),
        "--data.splits.train_fragments", f"[{LABELLED}]",
        "--data.splits.val_fragments", f"[{VAL}]",
        "--data.splits.test_fragments", f"[{TEST}]",
        "--data.tiles.samples_per_epoch", "1024",
        "--trainer.max_time", f"00:00:{minutes:02d}:{rest:02d}",
        "--max_epochs", "-1",
        "--seed_everything", str(seed),
        "--trainer.enable_progress_bar", "false",
        "--disable_callbacks", "[cam, eval_images]",
        *extra,
    ]  # fmt: skip


def child(kind: str, labelled: str, unlabelled: str, seed: int, budget_s: float, out: str, extra: list[str]) -> dict:
    """One side in this (fresh) process: ``matched`` (one fit of 2 × budget) or ``rounds`` (two of budget)."""
    out_dir = Path(out)
    shutil.rmtree(out_dir, ignore_errors=True)
    started = time.perf_counter()
    if kind == "matched":
        from lightning_app.cli import cli_main

        args = _fit_args(Path(labelled), seed, 2 * budget_s, extra)
        cli = cli_main(["fit", *args, "--trainer.default_root_dir", str(out_dir)])
        metrics = cli.trainer.callback_metrics
        return {
            "f05_val_threshold": float(metrics["test/f05_val_threshold"]),
            "f05_at_0.5": float(metrics["test/f05"]),
            "steps": int(cli.trainer.global_step),
            "wall_s": time.perf_counter() - started,
        }
    from lightning_app.label_rounds import run_rounds

    rows = run_rounds(
        _fit_args(Path(labelled), seed, budget_s, extra),
        unlabelled,
        out_dir,
        rounds=1,
        predict_args=["--trainer.enable_progress_bar", "false"],
    )
    record = json.loads((out_dir / "round_0" / "labels" / "pseudo_labels.json").read_text())
    result: dict[str, Any] = {"wall_s": time.perf_counter() - started, "pseudo_label_s": record["seconds"]}
    for row in rows:
        r = row["round"]
        result[f"round{r}_f05_val_threshold"] = row["test"]["test/f05_val_threshold"]
        result[f"round{r}_f05_at_0.5"] = row["test"]["test/f05"]
    result["made"] = rows[0]["made"]
    return result


def run_in_process(kind: str, **spec: Any) -> dict[str, Any]:
    """Runs `child` in a fresh Python process and returns its JSON result."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.pseudo_rounds", json.dumps({"kind": kind, **spec})],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{kind} run (seed {spec.get('seed')}) failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def pseudo_benchmark(
    work: Path,
    seeds: list[int],
    budget_s: float,
    *,
    small: int = 384,
    size: int = 768,
    ink_to_noise: float = 2.5,
    extra: list[str] | None = None,
) -> list[dict[str, Any]]:
    """Both sides per seed; prints the table and returns its rows."""
    labelled, unlabelled = ensure_data(work, small, size, ink_to_noise)
    rows = []
    for seed in seeds:
        spec = {"labelled": str(labelled), "unlabelled": str(unlabelled), "seed": seed, "budget_s": budget_s}
        runs = work / "pseudo_runs"
        matched = run_in_process("matched", **spec, out=str(runs / f"matched_{seed}"), extra=extra or [])
        rounds = run_in_process("rounds", **spec, out=str(runs / f"rounds_{seed}"), extra=extra or [])
        row = {"seed": seed, "matched": matched, "rounds": rounds}
        print(f"  seed {seed}: {json.dumps(row)}", flush=True)
        rows.append(row)
    print(
        f"\nLabel rounds on held-out fragments (labelled {LABELLED} {small}^2, validation {VAL} {small}^2, test "
        f"{TEST} {size}^2, {len(UNLABELLED)} unlabelled {size}^2 segments; ink {ink_to_noise:g}x noise; "
        f"{budget_s:.0f} s a round)"
    )
    print(summarise(rows, budget_s))
    return rows


def summarise(rows: list[dict[str, Any]], budget_s: float) -> str:
    """Markdown: per seed, round 0 (budget), round 0 (2 × budget, matched) and round 1; the paired difference."""
    lines = [
        f"| seed | round 0, {budget_s:.0f} s | round 0 matched, {2 * budget_s:.0f} s | round 1, {budget_s:.0f} + "
        f"{budget_s:.0f} s | round 1 - matched | pseudo-labelling s | labels made: ink / background / untrusted |",
        "|---:|---:|---:|---:|---:|---:|---|",
    ]
    diffs = []
    for row in rows:
        matched, rounds = row["matched"], row["rounds"]
        diff = rounds["round1_f05_val_threshold"] - matched["f05_val_threshold"]
        diffs.append(diff)
        made = rounds["made"]
        lines.append(
            f"| {row['seed']} | {rounds['round0_f05_val_threshold']:.3f} | {matched['f05_val_threshold']:.3f} "
            f"| {rounds['round1_f05_val_threshold']:.3f} | {diff:+.3f} | {rounds['pseudo_label_s']:.0f} "
            f"| {made['ink']:.1%} / {made['background']:.1%} / {made['untrusted']:.1%} |"
        )
    values = np.array(diffs, dtype=float)
    lines.append(
        f"\nround 1 - compute-matched round 0, test F0.5 at the validation threshold: mean {values.mean():+.3f} "
        f"over {len(values)} seed(s)"
    )
    return "\n".join(lines)


if __name__ == "__main__":
    print(json.dumps(child(**json.loads(sys.argv[1]))))
