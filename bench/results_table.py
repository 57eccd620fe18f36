"""The cross-task table of docs/results.md from several ``softprompt compare`` outputs (their report.json).

    .venv/bin/python bench/results_table.py runs/twitter_complaints runs/sst2 runs/trec runs/rte

Per task: each method's test accuracy (mean +- std over seeds), the soft prompt and the prompt
engineering that validation chose, and the goals as ``compare`` judged them. Text tasks (run 6) get
their own table: reference cross-entropy and BLEU per method. Nothing is chosen here: every "best"
is the one validation picked.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from softprompt.measuring.generation import LOWER_IS_BETTER
from softprompt.measuring.summary import PROMPT_ENGINEERING as ENGINEERING
from softprompt.measuring.summary import SOFT_PROMPTS as SOFT
from softprompt.measuring.summary import best_on_validation

SHOWN = ("zero-shot", "few-shot", "prompt-tuning", "prefix-tuning", "late-prompt", "lora")


def _acc(row: dict | None) -> str:
    if row is None or "accuracy" not in row:
        return "-"
    return f"{100 * row['accuracy']:.1f} ± {100 * row['accuracy_std']:.1f}"


TEXT_SHOWN = (*ENGINEERING, *SOFT, "lora", "full-ft")


def text_table(reports: list[dict]) -> None:
    """Per text task and method: test reference CE and BLEU (mean +- std over seeds), then the choice and goals."""
    head = ["task", "metric", *TEXT_SHOWN, "soft prompt chosen on validation", "goals met"]
    print("| " + " | ".join(head) + " |")
    print("|---" * len(head) + "|")
    for report in reports:
        by_kind = {m["kind"]: m for m in report["methods"] if "scores" in m}
        key = f"val_{report['primary_metric']}"
        soft = [by_kind[k] for k in SOFT if k in by_kind]
        lower = report["primary_metric"] in LOWER_IS_BETTER
        chosen = best_on_validation(soft, key, lower) if soft else None
        met = sum(bool(g["met"]) for g in report["goals"])
        for metric, digits in (("ce", 3), ("bleu", 1)):
            cells = [report["task"], metric + (" (primary)" if metric == report["primary_metric"] else "")]
            for kind in TEXT_SHOWN:
                found = by_kind.get(kind, {}).get("scores", {}).get(metric)
                cells.append("-" if found is None else f"{found['mean']:.{digits}f} ± {found['std']:.{digits}f}")
            cells += [f"{chosen['method']}: {chosen['chosen']}" if chosen else "-", f"{met}/{len(report['goals'])}"]
            print("| " + " | ".join(cells) + " |")


def main(directories: list[str]) -> None:
    reports = [json.loads((Path(d) / "report.json").read_text()) for d in directories]
    if any(r.get("kind") == "text" for r in reports):
        text_table([r for r in reports if r.get("kind") == "text"])
        directories = [d for d, r in zip(directories, reports) if r.get("kind") != "text"]
        print()
    if not directories:
        _goals(reports)
        return
    head = ["task", "test rows", "majority"] + [m for m in SHOWN] + ["soft prompt chosen on validation", "goals met"]
    print("| " + " | ".join(head) + " |")
    print("|---" * len(head) + "|")
    for directory in directories:
        report = json.loads((Path(directory) / "report.json").read_text())
        by_kind = {m["kind"]: m for m in report["methods"] if "accuracy" in m}
        soft = best_on_validation([by_kind[k] for k in SOFT if k in by_kind])
        met = sum(bool(g["met"]) for g in report["goals"])
        cells = [report["task"], str(report["test_rows"]), f"{100 * report['majority_class_accuracy']:.1f}"]
        cells += [_acc(by_kind.get(k)) for k in SHOWN]
        cells += [
            f"{soft['method']}: {soft['chosen']} ({soft['trainable_params']:,} params)",
            f"{met}/{len(report['goals'])}",
        ]
        print("| " + " | ".join(cells) + " |")
    print()
    _goals(reports)


def _goals(reports: list[dict]) -> None:
    for report in reports:
        print(f"{report['task']} ({report['total_seconds'] / 60:.1f} min):")
        for goal in report["goals"]:
            print(f"- {goal['goal']}: {goal['text']}")


if __name__ == "__main__":
    main(sys.argv[1:])
