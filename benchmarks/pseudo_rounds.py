"""Label-round benchmark: does a round of pseudo-labels beat training longer on the labels alone?

On the held-out family (`benchmarks.heldout_family`, never used to choose defaults), labels are scarce and
unlabelled segments plentiful: one small labelled fragment (192²) trains, a 384² one validates (threshold and
checkpoint), an unseen 768² fragment tests, and three 768² ``UNLABELLED`` segments have no labels at all. Per seed,
two runs with the same total training time:

- **round 0, matched**: ``scripts/fit.py`` on the labelled fragment for ``2 × budget`` seconds;
- **rounds**: ``scripts/label_rounds.py --rounds 1`` (round 0 for ``budget`` s, pseudo-labels of the unlabelled
  segments from its best checkpoint, round 1 on labelled + pseudo-labelled for ``budget`` s from round 0's
  weights). Pseudo-labelling's prediction time is reported apart; it is not training time.
- **oracle** (``--oracle``): round 1 again, from the same round-0 weights for ``budget`` s, on the segments' true
  labels, all trusted, in place of the pseudo-labels: the ceiling of any trust rule with this recipe.

Scored on the test fragment: F0.5 at the threshold chosen on the validation fragment. Each run is a fresh process.
Usage: ``python scripts/benchmark.py --pseudo [--oracle] [--seeds 0 1 2] [--round-budget 120]``.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
LABELLED, VAL, TEST = "pL", "pV", "pT"
UNLABELLED = ("pU1", "pU2", "pU3")
PROJECT_NOISE = 0.022  # the project generator's per-voxel noise, as a fraction of the dtype's range


def ensure_data(
    work: Path,
    small: int,
    size: int,
    ink_to_noise: float,
    seed: int = 2025,
    family: str = "heldout",
    val_size: int = 384,
) -> tuple[Path, Path]:
    """The labelled folder (train, validation and test fragments) and the unlabelled one (made once).

    ``family``: ``heldout`` (the judging data) or ``project`` (the project's own generator, where the rule's
    defaults were chosen: ink contrast ``ink_to_noise`` times its noise).
    """
    from benchmarks.heldout_family import make_heldout_fragment
    from datamodules.synthetic.fragments import make_fragment

    def project_fragment(target: Path, *, height: int, width: int, seed: int, ink_to_noise: float) -> Path:
        return make_fragment(target, height, width, seed=seed, ink_contrast=PROJECT_NOISE * ink_to_noise)

    make = make_heldout_fragment if family == "heldout" else project_fragment
    root = work / f"pseudo_{family}_{small}_{val_size}_{size}_{ink_to_noise:g}_{seed}"
    labelled, unlabelled = root / "labelled", root / "unlabelled"
    plan = [(labelled, LABELLED, small), (labelled, VAL, val_size), (labelled, TEST, size)]
    plan += [(unlabelled, fid, size) for fid in UNLABELLED]
    for index, (folder, fid, edge) in enumerate(plan):
        target = folder / fid
        if (target / "mask.png").is_file():
            continue
        fragment_seed = int(np.random.SeedSequence([seed, index]).generate_state(1)[0])
        make(target, height=edge, width=edge, seed=fragment_seed, ink_to_noise=ink_to_noise)
        if folder == unlabelled:  # unlabelled: their ink moves out of sight, kept only to grade the pseudo-labels
            (root / "truth").mkdir(exist_ok=True)
            (target / "inklabels.png").replace(root / "truth" / f"{fid}.png")
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


def child(
    kind: str,
    labelled: str,
    unlabelled: str,
    seed: int,
    budget_s: float,
    out: str,
    extra: list[str],
    rule_args: list[str] | None = None,
    rounds_kwargs: dict[str, Any] | None = None,
) -> dict:
    """One side in this (fresh) process: ``matched`` (one fit of 2 × budget), ``rounds`` (two of budget) or
    ``oracle`` (round 1 of the ``rounds`` run in ``out``'s sibling, on the true labels)."""
    out_dir = Path(out)
    shutil.rmtree(out_dir, ignore_errors=True)
    started = time.perf_counter()
    if kind in ("matched", "oracle"):
        from lightning_app.cli import cli_main

        args = _fit_args(Path(labelled), seed, (2 if kind == "matched" else 1) * budget_s, extra)
        if kind == "oracle":
            rounds = out_dir.parent / f"rounds_{seed}" / "round_0"
            truth = Path(unlabelled).parent / "truth"
            oracle = oracle_label_set(rounds / "labels", truth, out_dir / "labels")
            checkpoint = json.loads((rounds / "scores.json").read_text())["checkpoint"]
            args += ["--data.pseudo.folder", str(oracle), "--model.init_weights", checkpoint]
        cli = cli_main(["fit", *args, "--trainer.default_root_dir", str(out_dir / "fit")])
        metrics = cli.trainer.callback_metrics
        return {
            "f05_val_threshold": float(metrics["test/f05_val_threshold"]),
            "f05_at_0.5": float(metrics["test/f05"]),
            "steps": int(cli.trainer.global_step),
            "wall_s": time.perf_counter() - started,
        }
    import argparse

    from lightning_app.label_rounds import run_rounds
    from lightning_app.pseudo_label import add_rule_args, rule_from_args

    parser = argparse.ArgumentParser()
    add_rule_args(parser)
    rows = run_rounds(
        _fit_args(Path(labelled), seed, budget_s, extra),
        unlabelled,
        out_dir,
        rounds=1,
        rule=rule_from_args(parser.parse_args(rule_args or [])),
        predict_args=["--trainer.enable_progress_bar", "false"],
        **(rounds_kwargs or {}),
    )
    record = json.loads((out_dir / "round_0" / "labels" / "pseudo_labels.json").read_text())
    result: dict[str, Any] = {"wall_s": time.perf_counter() - started, "pseudo_label_s": record["seconds"]}
    for row in rows:
        r = row["round"]
        result[f"round{r}_f05_val_threshold"] = row["test"]["test/f05_val_threshold"]
        result[f"round{r}_f05_at_0.5"] = row["test"]["test/f05"]
    result["made"] = rows[0]["made"]
    result["graded"] = grade_label_set(out_dir / "round_0" / "labels", Path(unlabelled).parent / "truth")
    result["rule"] = rows[0]["rule"]
    result["round1_steps"] = rows[1].get("steps")
    return result


def oracle_label_set(label_set: Path, truth: Path, out: Path) -> Path:
    """A copy of ``label_set`` whose labels are the segments' true ink, every pixel trusted; returns its folder."""
    import tifffile
    import yaml
    from PIL import Image

    shutil.rmtree(out, ignore_errors=True)
    shutil.copytree(label_set, out)
    for entry in yaml.safe_load((out / "pseudo_labels.yaml").read_text())["fragments"]:
        true = np.asarray(Image.open(truth / f"{entry['id']}.png")) > 127
        tifffile.imwrite(out / entry["inklabels"], np.where(true, 255, 0).astype(np.uint8))
        tifffile.imwrite(out / entry["supervision"], np.full(true.shape, 255, dtype=np.uint8))
    return out


def grade_label_set(label_set: Path, truth: Path) -> dict[str, float] | None:
    """The pseudo-labels against the hidden truth, inside the papyrus: precision and recall of trusted ink, the
    share of true ink among trusted background, and the share of true ink left untrusted."""
    import tifffile
    import yaml
    from PIL import Image

    if not truth.is_dir():
        return None
    counts = np.zeros(5, dtype=np.int64)  # ink & true, ink, true, background & true, untrusted & true
    for entry in yaml.safe_load((label_set / "pseudo_labels.yaml").read_text())["fragments"]:
        true = np.asarray(Image.open(truth / f"{entry['id']}.png")) > 127
        mask = np.asarray(Image.open(entry["mask"])) > 0
        ink = tifffile.imread(label_set / entry["inklabels"]) >= 128
        trusted = tifffile.imread(label_set / entry["supervision"]) > 0
        ink, background, true = ink & trusted & mask, ~ink & trusted & mask, true & mask
        counts += [(ink & true).sum(), ink.sum(), true.sum(), (background & true).sum(), (~trusted & mask & true).sum()]
    return {
        "ink_precision": float(counts[0] / max(1, counts[1])),
        "ink_recall": float(counts[0] / max(1, counts[2])),
        "true_ink_in_background": float(counts[3] / max(1, counts[2])),
        "true_ink_untrusted": float(counts[4] / max(1, counts[2])),
    }


def run_in_process(kind: str, **spec: Any) -> dict[str, Any]:
    """Runs `child` in a fresh Python process and returns its JSON result."""
    from benchmarks.quality import run_module_child

    return run_module_child("benchmarks.pseudo_rounds", {"kind": kind, **spec})


def pseudo_benchmark(
    work: Path,
    seeds: list[int],
    budget_s: float,
    *,
    small: int = 192,
    val_size: int = 384,
    size: int = 768,
    ink_to_noise: float = 2.5,
    extra: list[str] | None = None,
    oracle: bool = False,
) -> list[dict[str, Any]]:
    """Both sides per seed (and the oracle round 1 with ``oracle``); prints the table and returns its rows."""
    labelled, unlabelled = ensure_data(work, small, size, ink_to_noise, val_size=val_size)
    rows = []
    for seed in seeds:
        spec = {"labelled": str(labelled), "unlabelled": str(unlabelled), "seed": seed, "budget_s": budget_s}
        runs = work / "pseudo_runs"
        matched = run_in_process("matched", **spec, out=str(runs / f"matched_{seed}"), extra=extra or [])
        rounds = run_in_process("rounds", **spec, out=str(runs / f"rounds_{seed}"), extra=extra or [])
        row = {"seed": seed, "matched": matched, "rounds": rounds}
        if oracle:
            row["oracle"] = run_in_process("oracle", **spec, out=str(runs / f"oracle_{seed}"), extra=extra or [])
        print(f"  seed {seed}: {json.dumps(row)}", flush=True)
        rows.append(row)
    print(
        f"\nLabel rounds on held-out fragments (labelled {LABELLED} {small}^2, validation {VAL} {val_size}^2, test "
        f"{TEST} {size}^2, {len(UNLABELLED)} unlabelled {size}^2 segments; ink {ink_to_noise:g}x noise; "
        f"{budget_s:.0f} s a round)"
    )
    print(summarise(rows, budget_s))
    return rows


def summarise(rows: list[dict[str, Any]], budget_s: float) -> str:
    """Markdown: per seed, round 0 (budget), round 0 (2 × budget, matched), round 1 and, where run, the oracle
    round 1; the paired differences and the labels' grading against the hidden truth."""
    oracle = all("oracle" in row for row in rows)
    head = (
        f"| seed | round 0, {budget_s:.0f} s | round 0 matched, {2 * budget_s:.0f} s | round 1, {budget_s:.0f} + "
        f"{budget_s:.0f} s | round 1 - matched |"
    )
    head += " oracle round 1 | oracle - matched |" if oracle else ""
    head += " labels made: ink / background / untrusted | ink precision / recall | true ink in background |"
    lines = [head, "|---:|---:|---:|---:|---:|" + ("---:|---:|" if oracle else "") + "---|---|---:|"]
    diffs: dict[str, list[float]] = {"round 1": [], "oracle": []}
    for row in rows:
        matched, rounds = row["matched"]["f05_val_threshold"], row["rounds"]
        diffs["round 1"].append(rounds["round1_f05_val_threshold"] - matched)
        cells = [
            str(row["seed"]),
            f"{rounds['round0_f05_val_threshold']:.3f}",
            f"{matched:.3f}",
            f"{rounds['round1_f05_val_threshold']:.3f}",
            f"{diffs['round 1'][-1]:+.3f}",
        ]
        if oracle:
            diffs["oracle"].append(row["oracle"]["f05_val_threshold"] - matched)
            cells += [f"{row['oracle']['f05_val_threshold']:.3f}", f"{diffs['oracle'][-1]:+.3f}"]
        made, graded = rounds["made"], rounds.get("graded") or {}
        cells.append(f"{made['ink']:.1%} / {made['background']:.1%} / {made['untrusted']:.1%}")
        if graded:
            cells += [
                f"{graded['ink_precision']:.2f} / {graded['ink_recall']:.2f}",
                f"{graded['true_ink_in_background']:.0%}",
            ]
        else:
            cells += ["-", "-"]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    for name, values in diffs.items():
        if values:
            lines.append(
                f"{name} - compute-matched round 0, test F0.5 at the validation threshold: mean "
                f"{np.mean(values):+.3f} over {len(values)} seed(s)"
            )
    return "\n".join(lines)


if __name__ == "__main__":
    print(json.dumps(child(**json.loads(sys.argv[1]))))
