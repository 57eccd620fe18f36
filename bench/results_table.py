"""The cross-task table of docs/results.md from several ``softprompt compare`` outputs (their report.json).

    .venv/bin/python bench/results_table.py runs/twitter_complaints runs/sst2 runs/trec runs/rte

Per task: each method's test accuracy (mean +- std over seeds), the soft prompt and the prompt
engineering that validation chose, and the goals as ``compare`` judged them. Nothing is chosen
here: every "best" is the one validation picked.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

SOFT = ("prompt-tuning", "p-tuning", "prefix-tuning", "late-prompt")
ENGINEERING = ("zero-shot", "few-shot")
SHOWN = ("zero-shot", "few-shot", "prompt-tuning", "prefix-tuning", "late-prompt", "lora")


def _chosen(rows: list[dict]) -> dict:
    return max(rows, key=lambda r: (r["val_accuracy"], -r["val_label_loss"]))


def _acc(row: dict | None) -> str:
    if row is None or "accuracy" not in row:
        return "-"
    return f"{100 * row['accuracy']:.1f} ± {100 * row['accuracy_std']:.1f}"


def main(directories: list[str]) -> None:
    head = ["task", "test rows", "majority"] + [m for m in SHOWN] + ["soft prompt chosen on validation", "goals met"]
    print("| " + " | ".join(head) + " |")
    print("|---" * len(head) + "|")
    for directory in directories:
        report = json.loads((Path(directory) / "report.json").read_text())
        by_kind = {m["kind"]: m for m in report["methods"] if "accuracy" in m}
        soft = _chosen([by_kind[k] for k in SOFT if k in by_kind])
        met = sum(bool(g["met"]) for g in report["goals"])
        cells = [report["task"], str(report["test_rows"]), f"{100 * report['majority_class_accuracy']:.1f}"]
        cells += [_acc(by_kind.get(k)) for k in SHOWN]
        cells += [
            f"{soft['method']}: {soft['chosen']} ({soft['trainable_params']:,} params)",
            f"{met}/{len(report['goals'])}",
        ]
        print("| " + " | ".join(cells) + " |")
    print()
    for directory in directories:
        report = json.loads((Path(directory) / "report.json").read_text())
        print(f"{report['task']} ({report['total_seconds'] / 60:.1f} min):")
        for goal in report["goals"]:
            print(f"- {goal['goal']}: {goal['text']}")


if __name__ == "__main__":
    main(sys.argv[1:])
