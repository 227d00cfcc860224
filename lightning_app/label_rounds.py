"""Label rounds: train, pseudo-label the unlabelled segments, train again on both, ``--rounds`` times.

``python scripts/label_rounds.py --rounds 2 --segments data/unlabelled --work_dir runs/rounds --data.data_dir data/lab``

Each round lives in its own folder under ``--work_dir``::

    round_0/fit/ink/version_0/   the fit: config.yaml, checkpoints, logs (round 0: labelled fragments only)
    round_0/labels/              the label set round 0's best checkpoint made of the segments (round 1 trains on it)
    round_0/scores.json          the round's settings, checkpoint, scores and label counts
    round_1/fit/ …               labelled fragments + round_0/labels (``--data.pseudo.folder``)
    rounds.json, rounds.md       the table of all rounds, printed at the end

Round ``r > 0`` starts from round ``r-1``'s best weights (``--init previous``, default) or from scratch
(``--init scratch``). ``--ema_teacher`` keeps an EMA of the weights during each fit, so checkpoints, and hence the
teacher, hold the average. Validation, the threshold and checkpoint choice use real labels only (pseudo-labelled
segments join the training split alone). A round whose ``scores.json`` exists is not run again: the same command
continues an interrupted run. Options the script does not know are the fit's (``--config``, ``--data.*``,
``--model.*``, ``--trainer.*``); ``--predict_args`` are the pseudo-labelling prediction's.
"""

from __future__ import annotations

import argparse
import json
import shlex
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from datamodules.pseudo.label_set import PseudoLabelRule
from datamodules.reading.layouts import fragment_ids
from lightning_app.pseudo_label import LabelSet, add_rule_args, id_list, pseudo_label, rule_from_args
from utils.atomic import atomic_write_text

__all__ = ["label_rounds_main", "parse_label_rounds_args", "rounds_table", "run_rounds"]

SCORES = "scores.json"


def parse_label_rounds_args(argv: Sequence[str]) -> tuple[argparse.Namespace, list[str]]:
    """The script's own options, and the rest (the fit's)."""
    parser = argparse.ArgumentParser(
        prog="label_rounds.py",
        description="Train, pseudo-label --segments, train again on labelled + pseudo-labelled data, --rounds times.",
        epilog="Other options (--config, --data.*, --model.*, --trainer.*) go to every round's fit.",
    )
    parser.add_argument("--rounds", type=int, default=1, help="pseudo-label rounds after round 0 (labelled only)")
    parser.add_argument("--segments", required=True, help="unlabelled segments: a folder (any layout) or a manifest")
    parser.add_argument("--work_dir", default="runs/rounds", help="where round_<r>/ folders and the table go")
    parser.add_argument("--fragments", default=None, help="segment ids of --segments to pseudo-label; default all")
    parser.add_argument("--init", choices=("previous", "scratch"), default="previous", help="round r>0 starts from")
    parser.add_argument("--ema_teacher", action="store_true", help="fit with an EMA of the weights (the teacher)")
    add_rule_args(parser)
    parser.add_argument("--predict_args", default="", help="options of the pseudo-labelling prediction, quoted")
    args, rest = parser.parse_known_args(list(argv))
    if args.rounds < 0:
        parser.error(f"--rounds {args.rounds}: must be >= 0")
    return args, rest


def label_rounds_main(argv: Sequence[str]) -> list[dict[str, Any]]:
    """Runs the script with ``argv``; prints the table and returns one row per round."""
    args, fit_args = parse_label_rounds_args(argv)
    rule = rule_from_args(args)
    names = fragment_ids(id_list(args.fragments))
    rows = run_rounds(
        fit_args,
        args.segments,
        Path(args.work_dir),
        rounds=args.rounds,
        rule=rule,
        fragments=names,
        init=args.init,
        ema_teacher=args.ema_teacher,
        predict_args=shlex.split(args.predict_args),
    )
    print(rounds_table(rows))
    return rows


def run_rounds(
    fit_args: Sequence[str],
    segments: str | Path,
    work_dir: Path,
    *,
    rounds: int = 1,
    rule: PseudoLabelRule | None = None,
    fragments: Sequence[str] | None = None,
    init: str = "previous",
    ema_teacher: bool = False,
    predict_args: Sequence[str] = (),
) -> list[dict[str, Any]]:
    """Runs rounds ``0..rounds`` (skipping those already finished) and writes the table; returns its rows."""
    rule = rule or PseudoLabelRule()
    if init not in ("previous", "scratch"):
        raise ValueError(f"init={init!r}: 'previous' or 'scratch'")
    work_dir = Path(work_dir).resolve()  # the rows and the rounds' configs name absolute paths: replayable anywhere
    work_dir.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    for r in range(rounds + 1):
        folder = work_dir / f"round_{r}"
        previous = rows[-1] if rows else None
        done = folder / SCORES
        if done.is_file():
            rows.append(json.loads(done.read_text()))
            continue
        row = _fit_round(r, folder, fit_args, previous, init, ema_teacher)
        if r < rounds:
            label_set = pseudo_label(row["checkpoint"], segments, folder / "labels", rule, fragments, predict_args)
            row["labels"] = str(label_set.manifest)
            row["made"] = _label_summary(label_set)
            row["rule"] = label_set.rule
        atomic_write_text(done, json.dumps(row, indent=2) + "\n")
        rows.append(row)
    atomic_write_text(work_dir / "rounds.json", json.dumps(rows, indent=2) + "\n")
    atomic_write_text(work_dir / "rounds.md", rounds_table(rows) + "\n")
    return rows


def _fit_round(
    r: int, folder: Path, fit_args: Sequence[str], previous: dict | None, init: str, ema_teacher: bool
) -> dict[str, Any]:
    """One round's fit (and the test after it); its row of the table."""
    from lightning_app.cli import cli_main  # Lightning only when fitting

    extra = ["--trainer.default_root_dir", str(folder / "fit")]
    trained_on = None
    if previous is not None:
        trained_on = previous.get("labels")
        if not trained_on or not Path(trained_on).is_file():
            raise FileNotFoundError(f"round {r}: the previous round's label set {trained_on!r} is missing")
        extra += ["--data.pseudo.folder", str(Path(trained_on).parent)]
        if init == "previous":
            extra += ["--model.init_weights", previous["checkpoint"]]
    if ema_teacher:
        extra += ["--ema.enabled", "true"]
    cli = cli_main(["fit", *fit_args, *extra])
    callback = cli.trainer.checkpoint_callback
    best = getattr(callback, "best_model_path", "") or ""
    if not best:
        raise RuntimeError(f"round {r}: the fit saved no best checkpoint (is validation configured?)")
    metrics = {k: float(v) for k, v in cli.trainer.callback_metrics.items() if k.startswith("test/")}
    score = getattr(callback, "best_model_score", None)
    return {
        "round": r,
        "start": "scratch" if previous is None or init == "scratch" else "previous",
        "teacher": "ema" if ema_teacher else "weights",
        "trained_on": trained_on,
        "checkpoint": str(Path(best).resolve()),
        "run": str(Path(cli.trainer.log_dir).resolve()) if cli.trainer.log_dir else None,
        "val_f05": None if score is None else float(score),
        "steps": int(cli.trainer.global_step),
        "test": metrics,
    }


def _label_summary(label_set: LabelSet) -> dict[str, float]:
    """The label set's segments together: papyrus pixels and the ink / background / untrusted shares."""
    counts = list(label_set.counts.values())
    papyrus = sum(c.papyrus for c in counts)
    n = max(1, papyrus)
    return {
        "segments": len(counts),
        "papyrus": papyrus,
        "ink": sum(c.ink for c in counts) / n,
        "background": sum(c.background for c in counts) / n,
        "untrusted": sum(c.untrusted for c in counts) / n,
    }


def rounds_table(rows: Sequence[dict[str, Any]]) -> str:
    """The rounds as a Markdown table: what each trained on, its scores and the labels it made."""

    def num(value: object) -> str:
        return "-" if value is None else f"{value:.4f}"

    lines = [
        "| round | start | trained on | val F0.5 (best) | test F0.5 | test F0.5 @ val threshold "
        "| labels made: ink / background / untrusted |",
        "|---:|---|---|---:|---:|---:|---|",
    ]
    for row in rows:
        made = row.get("made")
        shares = "-" if not made else f"{made['ink']:.1%} / {made['background']:.1%} / {made['untrusted']:.1%}"
        trained = f"labelled + round {row['round'] - 1} labels" if row.get("trained_on") else "labelled"
        test = row.get("test") or {}
        lines.append(
            f"| {row['round']} | {row['start']} | {trained} | {num(row.get('val_f05'))} "
            f"| {num(test.get('test/f05'))} | {num(test.get('test/f05_val_threshold'))} | {shares} |"
        )
    return "\n".join(lines)

