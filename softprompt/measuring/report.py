"""The comparison report: a markdown table, the same numbers as JSON, and a PNG chart with learning curves.

Everything shown comes from :func:`softprompt.measuring.summary.summarise` (a
:class:`~softprompt.measuring.records.LabelReport`): per method the settings chosen on validation, the
validation score, the test accuracy as mean +- standard deviation over seeds with its 95% bootstrap
interval (prompt engineering: the context chosen, few-shot's other draws in a line under the table),
costs, and each candidate the search tried.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from softprompt.core import run_files
from softprompt.core.files import atomic_path, write_json
from softprompt.measuring.methods import FAMILY
from softprompt.measuring.records import ReportedTrial, to_json
from softprompt.measuring.report_records import Done, LabelReport, LabelRow, MethodRow, Report

COLORS = {
    "prompt engineering": "#9e9e9e",
    "prompt tuning": "#1f77b4",
    "prefix tuning": "#17becf",
    "late prompt": "#2ca02c",
    "LoRA": "#ff7f0e",
    "full fine-tuning": "#d62728",
}


def size(n: float | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"


def params(n: int, percent: float) -> str:
    return "0" if not n else f"{n:,} ({percent:.4f}%)" if percent < 0.1 else f"{n:,} ({percent:.2f}%)"


def family(row: MethodRow) -> str:
    return FAMILY[row.kind]


def peak(row: Done) -> str:
    """The larger peak RSS of the method's selection and test processes."""
    rss = max(row.selected.select_peak_rss_mb or 0, row.tested.test_peak_rss_mb or 0)
    return f"{rss:.0f} MB" if rss else "-"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def _rows(report: LabelReport) -> str:
    """How the training file was split for the choices: one validation split, or folds."""
    head = report.header
    split = (
        f"{head.train_rows} training rows, {head.validation_rows} validation rows carved out of the "
        "training file (stratified by label) for every choice"
    )
    if not head.cv_folds:
        return split
    return (
        f"{head.train_rows + head.validation_rows} training rows: trained methods chose by {head.cv_folds}-fold "
        f"cross-validation (stratified; every row validates once, val acc is the folds' mean) because a validation "
        f"split would hold fewer than {head.compare['cv_below']} rows; their runs and prompt engineering use the "
        f"first fold: {split}"
    )


def markdown(report: LabelReport) -> str:
    head = report.header
    setup, compare = head.setup, head.compare
    rows = [
        f"# softprompt compare: {head.task} on {head.model}",
        "",
        f"{_rows(report)}; {report.test_rows} test rows, read only after "
        f"every choice was made (methods marked * scored fewer); majority-class accuracy "
        f"{100 * report.majority_class_accuracy:.1f}%. Every trained method tried {compare['search_budget']} "
        f"candidates of {budget(setup, compare)}, stopping after {compare['patience']} validation scores without "
        f"improvement; the best on validation accuracy was trained with {compare['seeds']} seeds.",
        "",
        "| method | chosen on validation | val acc | test acc (mean ± std) | 95% CI | macro-F1 | trainable params "
        "| train time | selection time | peak RSS | adapter | latency / example |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for m in report.methods:
        if not isinstance(m, LabelRow):
            rows.append(f"| {m.method} | failed: {m.error} | | | | | | | | | | |")
            continue
        chose, tested = m.selected, m.tested
        star = "*" if tested.costs.eval_rows < report.test_rows else ""
        low, high = tested.accuracy_ci
        rows.append(
            f"| {m.method}{star} | {chose.chosen} | {_pct(chose.validation.get('val_accuracy'))} | "
            f"{_pct(tested.accuracy)} ± {_pct(tested.accuracy_std)} ({len(tested.test_runs)}) | "
            f"{_pct(low)}-{_pct(high)} | {_pct(tested.macro_f1)} | "
            f"{params(chose.trainable_params, chose.trainable_percent)} | {chose.train_seconds:.0f} s | "
            f"{chose.select_seconds:.0f} s | {peak(m)} | {size(tested.costs.adapter_bytes)} | "
            f"{tested.costs.ms_per_example:.0f} ms |"
        )
    rows += draw_lines(report.methods, _pct)
    rows += transfer_lines(report.methods)
    ensemble = report.ensemble
    if ensemble:
        rows += [
            "",
            f"Ensemble of prompt tuning's {len(ensemble.members)} seed prompts (not a choice, one more "
            f"number): mean-log-prob vote {_pct(ensemble.mean.accuracy)}% / {_pct(ensemble.mean.macro_f1)} "
            f"macro-F1; majority vote {_pct(ensemble.majority.accuracy)}% / {_pct(ensemble.majority.macro_f1)}.",
        ]
    short = [m for m in report.methods if isinstance(m, LabelRow) and m.tested.costs.eval_rows < report.test_rows]
    if short:
        rows += [
            "",
            "* scored on the first "
            + ", ".join(f"{m.tested.costs.eval_rows} ({m.method})" for m in short)
            + " test rows to fit the time budget.",
        ]
    rows += ["", "## Goals", ""] + [f"- {g.goal}: {g.text}" for g in report.goals]
    rows += ["", "## Every candidate, on validation", ""] + _candidates(report)
    rows += [
        "",
        "Test accuracy is the mean over seeds (their count in brackets; prompt engineering: the one context "
        "validation chose, as deployed); the interval is a 95% percentile bootstrap "
        "over test rows of that mean (softprompt/measuring/stats.py). Latency is batched scoring time divided by rows. "
        "Peak RSS is the larger of the method's selection and test processes (base model included). Trainable "
        "parameters include a residual MLP where one was chosen; the adapter stores only the prompt it produces.",
        f"Whole run: {report.total_seconds / 60:.1f} min, {report.torch_threads} torch threads.",
    ]
    return "\n".join(rows) + "\n"


def draw_lines(methods: Sequence[MethodRow], shown: Callable[[float], str]) -> list[str]:
    """Under the table, for few-shot: the draw validation chose (the row's number) and every draw of that
    setting on test, the spread a user's own draw could land in."""
    out = []
    for m in methods:
        found = m.tested.draws if isinstance(m, Done) else None
        if found is None or len(found.runs) < 2:
            continue
        chosen = next(r for r in found.runs if r.chosen)
        metric = found.metric
        each = ", ".join(
            f"draw {r.seed} {shown(r.test[metric])}" + (" (chosen)" if r.chosen else "") for r in found.runs
        )
        out.append(
            f"{m.method}: validation chose draw {chosen.seed} ({shown(chosen.test[metric])} on test, the row's "
            f"number); the {len(found.runs)} draws of that setting (examples drawn with each seed, each in its "
            f"best order on validation) score {shown(found.mean)} ± {shown(found.std)} on test: {each}."
        )
    return ["", *out] if out else []


def transfer_lines(methods: Sequence[MethodRow]) -> list[str]:
    """Under the table, for every soft-prompt method given a library: which library prompt its init library
    candidates started from, among how many, and what choosing cost (one shared scoring pass)."""
    out = []
    for m in methods:
        for found in (m.selected.transfer if m.selected else None) or ():
            best = found.chosen_scores
            score = ", ".join(f"{k.removeprefix('val_')} {v:.3g}" for k, v in best.items() if k.startswith("val_"))
            out.append(
                f"{m.method}, library init: {found.scored} prompts of {found.library} fit and were scored on "
                f"validation in {found.seconds:.1f} s (one shared pass; {found.skipped} of other forms or "
                f"lengths skipped); started from {found.chosen} (trained on {found.task}; {score})."
            )
    return ["", *out] if out else []


def budget(setup: dict[str, Any], compare: dict[str, Any]) -> str:
    """A candidate's budget in words: training seconds (steps unbounded) or steps."""
    rows = f"{setup['batch_size']} rows a step"
    if not setup["budget"]:
        return (
            f"{setup['max_seconds']:g} s of training each ({rows}, as many steps as fit), validation loss and "
            f"score every {compare.get('eval_every_seconds', 0):g} s of training"
        )
    cap = f", at most {setup['max_seconds']:g} s" if setup.get("max_seconds") else ""
    return f"at most {setup['budget']} steps of {rows}{cap}, validation loss every {compare['eval_every']} steps"


def _candidates(report: LabelReport) -> list[str]:
    return candidates(
        report.methods,
        ("val acc", lambda c: _pct(c.validation.get("val_accuracy"))),
        ("val label CE", "val_label_loss"),
    )


def candidates(
    methods: Sequence[MethodRow], score: tuple[str, Callable[[ReportedTrial], str]], tie: tuple[str, str]
) -> list[str]:
    """Every candidate of every method on validation: ``score`` (column name, how a candidate shows it) and
    the ``tie``-breaking loss (column name, validation score), steps and training time."""
    out = [
        f"| method | candidate | {score[0]} | {tie[0]} | steps (best) | train time |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for m in methods:
        for c in m.selected.candidates if m.selected else ():
            if c.error:
                out.append(f"| {m.method} | {c.settings} | failed: {c.error} | | | |")
                continue
            chosen = " **(chosen)**" if m.selected and c.settings == m.selected.chosen else ""
            steps = f"{c.steps} ({c.best_step})" if c.steps is not None else "-"
            seconds = f"{c.train_seconds:.0f} s" if c.train_seconds is not None else "-"
            out.append(
                f"| {m.method} | {c.settings}{chosen} | {score[1](c)} | "
                f"{c.validation.get(tie[1], float('nan')):.3f} | {steps} | {seconds} |"
            )
    return out


def chart(report: LabelReport, path: Path) -> Path:
    """Test accuracy (mean, interval, each seed) per method, and the chosen trained runs' validation curves."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [m for m in report.methods if isinstance(m, LabelRow)]
    fig, (acc_ax, curve_ax) = plt.subplots(1, 2, figsize=(13, 0.5 * max(len(ok), 4) + 3))
    names = [f"{m.method}\n({m.selected.chosen})" for m in ok]
    for y, m in enumerate(ok):
        tested = m.tested
        low, high = tested.accuracy_ci
        acc_ax.barh(y, 100 * tested.accuracy, color=COLORS[family(m)], alpha=0.8)
        acc_ax.plot([100 * low, 100 * high], [y, y], color="black", lw=1.5)
        each = [100 * r.accuracy for r in tested.test_runs]
        acc_ax.scatter(each, [y] * len(each), color="black", s=10, zorder=3)
    acc_ax.set_yticks(range(len(ok)), names, fontsize=7)
    acc_ax.axvline(100 * report.majority_class_accuracy, color="black", ls="--", lw=1, label="majority class")
    acc_ax.set_xlabel("test accuracy (%): mean over seeds, 95% CI, each seed")
    acc_ax.set_xlim(0, 100)
    acc_ax.legend(loc="lower right")
    acc_ax.invert_yaxis()
    curves(report.methods, curve_ax)
    return save_chart(fig, curve_ax, report, path)


def save_chart(fig: Any, curve_ax: Any, report: Report, path: Path) -> Path:
    """Title, legend and an atomic PNG write: how every comparison chart ends."""
    import matplotlib.pyplot as plt

    if curve_ax.lines:
        curve_ax.legend()
    fig.suptitle(f"{report.header.task} on {report.header.model}")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    return path


def curves(methods: Sequence[MethodRow], ax: Any, scale: float = 100, name: str = "validation accuracy (%)") -> None:
    """The score choices are made on against training seconds: every run of every trained method (the chosen
    ones bold)."""
    for m in methods:
        if m.selected is None:
            continue
        chosen = {id(r) for r in m.selected.seed_runs}
        labelled = False
        for run in (*m.selected.candidates, *m.selected.seed_runs):
            points = [(p.seconds, scale * p.score) for p in run.curve or () if p.score is not None]
            if not points:
                continue
            seconds, score = zip(*points)
            bold = id(run) in chosen
            ax.plot(
                seconds,
                score,
                color=COLORS[family(m)],
                alpha=0.9 if bold else 0.35,
                lw=1.6 if bold else 0.8,
                label=None if labelled else m.method,
            )
            labelled = True
    ax.set_xlabel("training seconds")
    ax.set_ylabel(name)
    ax.set_title(f"{name} while training\n(thin: every candidate; bold: the chosen setting, each seed)", fontsize=9)


def write_report(report: LabelReport, output: Path) -> None:
    write_json(output / run_files.REPORT_JSON, to_json(report))
    with atomic_path(output / run_files.REPORT_MD) as tmp:
        tmp.write_text(markdown(report), encoding="utf-8")
    chart(report, output / "report.png")
