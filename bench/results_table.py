"""The cross-task table of docs/results.md from several ``softprompt compare`` outputs (their report.json).

    .venv/bin/python bench/results_table.py runs/twitter_complaints runs/sst2 runs/trec runs/rte

Per task: each method's test accuracy (mean +- std over seeds), the soft prompt and the prompt
engineering that validation chose, and the goals as ``compare`` judged them. Text tasks (run 6) get
their own table: reference cross-entropy and BLEU per method. Nothing is chosen here: every "best"
is the one validation picked.
"""

from __future__ import annotations

import sys
from pathlib import Path

from softprompt.core import run_files
from softprompt.measuring.generation import LOWER_IS_BETTER
from softprompt.measuring.methods import Kind
from softprompt.measuring.report_records import REPORT, AnyReport, LabelReport, LabelRow, TextReport, TextRow
from softprompt.measuring.summary import PROMPT_ENGINEERING as ENGINEERING
from softprompt.measuring.summary import SOFT_PROMPTS as SOFT
from softprompt.measuring.summary import best_on_validation

SHOWN = (Kind.ZERO_SHOT, Kind.FEW_SHOT, Kind.PROMPT_TUNING, Kind.PREFIX_TUNING, Kind.LATE_PROMPT, Kind.LORA)
TEXT_SHOWN = (*ENGINEERING, *SOFT, Kind.LORA, Kind.FULL)


def _read(directory: str) -> AnyReport:
    return REPORT.validate_json((Path(directory) / run_files.REPORT_JSON).read_text(encoding="utf-8"))


def _acc(row: LabelRow | None) -> str:
    if row is None:
        return "-"
    return f"{100 * row.tested.accuracy:.1f} ± {100 * row.tested.accuracy_std:.1f}"


def _met(report: AnyReport) -> str:
    return f"{sum(goal.met for goal in report.goals)}/{len(report.goals)}"


def text_table(reports: list[TextReport]) -> None:
    """Per text task and method: test reference CE and BLEU (mean +- std over seeds), then the choice and goals."""
    head = ["task", "metric", *(kind.value for kind in TEXT_SHOWN), "soft prompt chosen on validation", "goals met"]
    print("| " + " | ".join(head) + " |")
    print("|---" * len(head) + "|")
    for report in reports:
        by_kind = {m.kind: m for m in report.methods if isinstance(m, TextRow)}
        soft = [by_kind[k] for k in SOFT if k in by_kind]
        lower = report.primary_metric in LOWER_IS_BETTER
        chosen = best_on_validation(soft, f"val_{report.primary_metric}", lower) if soft else None
        for metric, digits in (("ce", 3), ("bleu", 1)):
            cells = [report.header.task, metric + (" (primary)" if metric == report.primary_metric else "")]
            for kind in TEXT_SHOWN:
                row = by_kind.get(kind)
                found = row.tested.scores.get(metric) if row else None
                cells.append("-" if found is None else f"{found.mean:.{digits}f} ± {found.std:.{digits}f}")
            cells += [f"{chosen.method}: {chosen.selected.chosen}" if chosen else "-", _met(report)]
            print("| " + " | ".join(cells) + " |")


def main(directories: list[str]) -> None:
    reports = [_read(d) for d in directories]
    text = [r for r in reports if isinstance(r, TextReport)]
    labels = [r for r in reports if isinstance(r, LabelReport)]
    if text:
        text_table(text)
        print()
    if not labels:
        _goals(reports)
        return
    head = ["task", "test rows", "majority", *(k.value for k in SHOWN), "soft prompt chosen on validation", "goals met"]
    print("| " + " | ".join(head) + " |")
    print("|---" * len(head) + "|")
    for report in labels:
        by_kind = {m.kind: m for m in report.methods if isinstance(m, LabelRow)}
        soft = best_on_validation([by_kind[k] for k in SOFT if k in by_kind])
        cells = [report.header.task, str(report.test_rows), f"{100 * report.majority_class_accuracy:.1f}"]
        cells += [_acc(by_kind.get(k)) for k in SHOWN]
        chosen = soft.selected
        cells += [f"{soft.method}: {chosen.chosen} ({chosen.trainable_params:,} params)", _met(report)]
        print("| " + " | ".join(cells) + " |")
    print()
    _goals(reports)


def _goals(reports: list[AnyReport]) -> None:
    for report in reports:
        print(f"{report.header.task} ({report.total_seconds / 60:.1f} min):")
        for goal in report.goals:
            print(f"- {goal.goal}: {goal.text}")


if __name__ == "__main__":
    main(sys.argv[1:])
