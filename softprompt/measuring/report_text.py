"""A text task's comparison report: the metrics table, the goals, and every method's outputs side by side.

Written as report.md, report.json, report.png (the primary metric per method and its validation
curves) and report.html (the side-by-side outputs as a page). Outputs are model text: markdown
gets them in fenced blocks and the page through ``html.escape``, so no output becomes markup.
"""

from __future__ import annotations

import html
import re
from pathlib import Path

from softprompt.core import run_files
from softprompt.core.files import atomic_path, write_json
from softprompt.measuring.generation import LOWER_IS_BETTER
from softprompt.measuring.records import to_json
from softprompt.measuring.report import (
    COLORS,
    budget,
    candidates,
    curves,
    draw_lines,
    family,
    params,
    peak,
    save_chart,
    size,
    transfer_lines,
)
from softprompt.measuring.report_records import TextReport, TextResult, TextRow

NAMES = {"ce": "reference CE", "bleu": "BLEU", "chrf": "chrF", "rougeL": "ROUGE-L"}
Shown = tuple[str, list[str], list[tuple[str, str]]]  # an input, its references, each method's output


def _score(tested: TextResult, name: str, digits: int = 1) -> str:
    found = tested.scores[name]
    low, high = found.ci
    return f"{found.mean:.{digits}f} ± {found.std:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


def markdown(report: TextReport) -> str:
    head, primary = report.header, report.primary_metric
    setup, compare = head.setup, head.compare
    better = "lower" if primary in LOWER_IS_BETTER else "higher"
    rows = [
        f"# softprompt compare: {head.task} on {head.model} (text generation)",
        "",
        f"{head.train_rows} training rows, {head.validation_rows} validation rows carved out of the "
        f"training file (inputs with several references kept on one side) for every choice; {report.test_rows} "
        f"test inputs ({report.references_per_input:.1f} references each on average), read only after every "
        f"choice was made. Validation selects on {NAMES[primary]} ({better} is better). Every trained method "
        f"tried {compare['search_budget']} candidates of {budget(setup, compare)}, stopping after "
        f"{compare['patience']} validation scores without improvement; the best was trained with "
        f"{compare['seeds']} seeds. Greedy decoding through the engine.",
        "",
        f"| method | chosen on validation | val {NAMES[primary]} | reference CE (nats/token) | perplexity | BLEU | "
        "chrF | ROUGE-L | trainable params | train time | selection time | peak RSS | adapter | test time |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for m in report.methods:
        if not isinstance(m, TextRow):
            rows.append(f"| {m.method} | failed: {m.error} |" + " |" * 12)
            continue
        chose, tested = m.selected, m.tested
        rows.append(
            f"| {m.method} | {chose.chosen} | {chose.validation.get(f'val_{primary}', float('nan')):.3f} | "
            f"{_score(tested, 'ce', 3)} | {tested.ppl:.1f} | {_score(tested, 'bleu')} | {_score(tested, 'chrf')} | "
            f"{_score(tested, 'rougeL')} | {params(chose.trainable_params, chose.trainable_percent)} | "
            f"{chose.train_seconds:.0f} s | {chose.select_seconds:.0f} s | {peak(m)} | "
            f"{size(tested.costs.adapter_bytes)} | {tested.costs.test_seconds:.0f} s |"
        )
    digits = 3 if primary == "ce" else 1
    rows += draw_lines(report.methods, lambda value: f"{value:.{digits}f}")
    rows += transfer_lines(report.methods)
    rows += [
        "",
        "Each score: mean ± standard deviation over seeds (prompt engineering: the one context validation chose, "
        "as deployed), then its 95% bootstrap interval over test inputs "
        "(each seed's corpus metric recomputed on every resample; softprompt/measuring/stats.py). Reference CE: "
        "mean cross-entropy per token of every reference (end-of-text included) after the input, as training "
        "measures it. BLEU and chrF: sacrebleu, corpus level, all references; ROUGE-L: rouge-score F1 against "
        "the best reference, mean over inputs.",
        "",
        "## Goals",
        "",
        *[f"- {g.goal}: {g.text}" for g in report.goals],
        "",
        "## Every candidate, on validation",
        "",
        *_candidates(report),
        "",
        "## Outputs side by side",
        "",
        *_side_by_side(_shown(report)),
        "",
        f"Whole run: {report.total_seconds / 60:.1f} min, {report.torch_threads} torch threads.",
    ]
    return "\n".join(rows) + "\n"


def _candidates(report: TextReport) -> list[str]:
    key = f"val_{report.primary_metric}"
    shown = (f"val {NAMES[report.primary_metric]}", lambda c: f"{c.validation.get(key, float('nan')):.3f}")
    return candidates(report.methods, shown, ("val CE", "val_ce"))


def _fenced(text: str) -> list[str]:
    """Text as a fenced block that no run of backticks inside it can close."""
    fence = "`" * max(3, 1 + max((len(run) for run in re.findall(r"`+", text)), default=0))
    return [fence + "text", text, fence]


def _shown(report: TextReport) -> list[Shown]:
    """(input, references, [(method, output)]) for every input shown side by side: test rows, then raw inputs."""
    side = report.side_by_side
    done = [(m.method, m.tested) for m in report.methods if isinstance(m, TextRow)]
    shown: list[Shown] = [
        (text, list(refs), [(method, t.outputs[i]) for method, t in done if i < len(t.outputs)])
        for i, (text, refs) in enumerate(zip(side.inputs, side.references, strict=True))
    ]
    for i, text in enumerate(side.showcase):
        shown.append((text, [], [(method, t.showcase[i]) for method, t in done if i < len(t.showcase)]))
    return shown


def _side_by_side(shown: list[Shown]) -> list[str]:
    out = [
        "The first test inputs (with their references) and the task's raw inputs (no template), each method's "
        "greedy output from its first seed. Also in report.html.",
    ]
    for number, (text, refs, outputs) in enumerate(shown, start=1):
        out += ["", f"### Input {number}" + ("" if refs else " (raw, no template)"), "", *_fenced(text)]
        for ref in refs:
            out += ["", "reference:", "", *_fenced(ref)]
        for method, output in outputs:
            out += ["", f"**{method}**:", "", *_fenced(output or "(nothing)")]
    return out


def page(task: str, model: str, shown: list[Shown]) -> str:
    """A page of the side-by-side outputs: one table per input, every text escaped."""
    e = html_escape
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>softprompt compare: {e(task)}</title>",
        "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto}td,th{border:1px solid #ccc;"
        "padding:6px;vertical-align:top;text-align:left}table{border-collapse:collapse;width:100%;margin-bottom:2em}"
        "pre{white-space:pre-wrap;margin:0}th{width:14em}</style></head><body>",
        f"<h1>{e(task)} on {e(model)}: outputs side by side</h1>",
    ]
    for number, (text, refs, outputs) in enumerate(shown, start=1):
        parts.append(f"<h2>Input {number}{'' if refs else ' (raw, no template)'}</h2><table>")
        parts.append(f"<tr><th>input</th><td><pre>{e(text)}</pre></td></tr>")
        parts += [f"<tr><th>reference</th><td><pre>{e(ref)}</pre></td></tr>" for ref in refs]
        parts += [f"<tr><th>{e(method)}</th><td><pre>{e(output)}</pre></td></tr>" for method, output in outputs]
        parts.append("</table>")
    return "\n".join(parts) + "</body></html>\n"


def html_escape(text: str) -> str:
    return html.escape(str(text), quote=True)


def chart(report: TextReport, path: Path) -> Path:
    """The primary metric per method (mean, interval, each seed), and the trained runs' validation curves."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    primary = report.primary_metric
    ok = [m for m in report.methods if isinstance(m, TextRow)]
    fig, (bar_ax, curve_ax) = plt.subplots(1, 2, figsize=(13, 0.5 * max(len(ok), 4) + 3))
    for y, m in enumerate(ok):
        found = m.tested.scores[primary]
        bar_ax.barh(y, found.mean, color=COLORS[family(m)], alpha=0.8)
        bar_ax.plot(found.ci, [y, y], color="black", lw=1.5)
        bar_ax.scatter(found.runs, [y] * len(found.runs), color="black", s=10, zorder=3)
    bar_ax.set_yticks(range(len(ok)), [f"{m.method}\n({m.selected.chosen})" for m in ok], fontsize=7)
    bar_ax.set_xlabel(f"test {NAMES[primary]}: mean over seeds, 95% CI, each seed")
    bar_ax.invert_yaxis()
    curves(report.methods, curve_ax, 1.0, f"validation {NAMES[primary]}")
    return save_chart(fig, curve_ax, report, path)


def write_text_report(report: TextReport, output: Path) -> None:
    write_json(output / run_files.REPORT_JSON, to_json(report))
    with atomic_path(output / run_files.REPORT_MD) as tmp:
        tmp.write_text(markdown(report), encoding="utf-8")
    with atomic_path(output / "report.html") as tmp:
        tmp.write_text(page(report.header.task, report.header.model, _shown(report)), encoding="utf-8")
    chart(report, output / "report.png")
