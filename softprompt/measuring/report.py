"""The comparison report: a markdown table, the same numbers as JSON, and a PNG chart."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from softprompt.core.adapter import atomic_path, write_json
from softprompt.measuring.methods import FAMILY, Kind

COLORS = {
    "prompt engineering": "#9e9e9e",
    "prompt tuning": "#1f77b4",
    "prefix tuning": "#17becf",
    "LoRA": "#ff7f0e",
    "full fine-tuning": "#d62728",
}


def _size(n: float | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"


def _params(n: int, percent: float) -> str:
    return "0" if not n else f"{n:,} ({percent:.4f}%)" if percent < 0.1 else f"{n:,} ({percent:.2f}%)"


def _family(result: dict[str, Any]) -> str:
    return FAMILY[Kind(result["spec"]["kind"])]


def goals(report: dict[str, Any]) -> list[str]:
    """The issue's goals, checked against this report's numbers (test-set selection caveat applies)."""
    ok = [m for m in report["methods"] if "error" not in m]
    engineered = [m for m in ok if _family(m) == "prompt engineering"]
    tiny = [m for m in ok if m["spec"]["kind"] == Kind.PROMPT_TUNING.value and m["trainable_percent"] < 0.01]
    lora = [m for m in ok if m["spec"]["kind"] == Kind.LORA.value]
    lines = []
    if tiny and engineered:
        best_pt, best_pe = max(tiny, key=lambda m: m["accuracy"]), max(engineered, key=lambda m: m["accuracy"])
        gap = 100 * (best_pt["accuracy"] - best_pe["accuracy"])
        lines.append(f"prompt tuning (< 0.01% params; best: {best_pt['name']}) vs best prompt engineering "
                     f"({best_pe['name']}): {gap:+.1f} points -> {'met' if gap >= 10 else 'not met'} (goal: >= +10)")  # fmt: skip
        if lora:
            gap_lora = 100 * (best_pt["accuracy"] - lora[0]["accuracy"])
            lines.append(f"prompt tuning vs LoRA: {gap_lora:+.1f} points -> "
                         f"{'met' if gap_lora >= -3 else 'not met'} (goal: within 3 points)")  # fmt: skip
    minutes = report["total_seconds"] / 60
    lines.append(f"whole compare: {minutes:.1f} min -> {'met' if minutes < 45 else 'not met'} (goal: < 45 min)")
    return lines


def markdown(report: dict[str, Any]) -> str:
    rows = [
        f"# softprompt compare: {report['task']} on {report['model']}",
        "",
        f"{report['train_rows']} training rows; {report['test_rows']} test rows (methods marked * used fewer); "
        f"majority-class accuracy {100 * report['majority_class_accuracy']:.1f}%. "
        f"Budget: {report['setup']['budget']} optimizer steps of {report['setup']['batch_size']} rows per trained method.",
        "",
        "| method | family | accuracy | macro-F1 | trainable params | train time | peak RSS | adapter size | latency / example |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for m in report["methods"]:
        if "error" in m:
            rows.append(f"| {m['name']} | {_family(m)} | failed: {m['error']} | | | | | | |")
            continue
        star = "*" if m["eval_rows"] < report["test_rows"] else ""
        rss = f"{m['peak_rss_mb']:.0f} MB" if m.get("peak_rss_mb") else "-"
        rows.append(
            f"| {m['name']}{star} | {_family(m)} | {100 * m['accuracy']:.1f} | {100 * m['macro_f1']:.1f} | "
            f"{_params(m['trainable_params'], m['trainable_percent'])} | {m['train_seconds']:.0f} s | {rss} | "
            f"{_size(m['adapter_bytes'])} | {m['ms_per_example']:.0f} ms |"
        )
    ensemble = report.get("ensemble")
    if ensemble:
        rows += ["", f"Prompt ensemble of {len(ensemble['members'])} soft prompts ({', '.join(ensemble['members'])}): "
                 f"mean-log-prob vote {100 * ensemble['mean']['accuracy']:.1f}% accuracy / "
                 f"{100 * ensemble['mean']['macro_f1']:.1f} macro-F1; majority vote "
                 f"{100 * ensemble['majority']['accuracy']:.1f}% / {100 * ensemble['majority']['macro_f1']:.1f}."]  # fmt: skip
    skipped = [m for m in report["methods"] if "error" not in m and m["eval_rows"] < report["test_rows"]]
    if skipped:
        rows += ["", "* evaluated on the first " + ", ".join(f"{m['eval_rows']} ({m['name']})" for m in skipped)
                 + " test rows to fit the time budget."]  # fmt: skip
    rows += ["", "## Goals", ""] + [f"- {line}" for line in goals(report)]
    rows += [
        "",
        "Latency is batched scoring time divided by rows (all labels of a row scored). Peak RSS is "
        "the method's own process (base model included). Trainable parameters for P-tuning include "
        "its MLP; its adapter stores only the folded prompt.",
        f"Whole run: {report['total_seconds'] / 60:.1f} min, {report['torch_threads']} torch threads.",
    ]
    return "\n".join(rows) + "\n"


def chart(report: dict[str, Any], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [m for m in report["methods"] if "error" not in m]
    names = [m["name"] for m in ok]
    fig, (acc_ax, par_ax) = plt.subplots(1, 2, figsize=(12, 0.45 * len(ok) + 1.8), sharey=True)
    colors = [COLORS[_family(m)] for m in ok]
    acc_ax.barh(names, [100 * m["accuracy"] for m in ok], color=colors)
    acc_ax.axvline(100 * report["majority_class_accuracy"], color="black", ls="--", lw=1, label="majority class")
    acc_ax.set_xlabel("test accuracy (%)")
    acc_ax.set_xlim(0, 100)
    acc_ax.legend(loc="lower right")
    acc_ax.invert_yaxis()
    par_ax.barh(names, [max(m["trainable_params"], 1) for m in ok], color=colors)
    par_ax.set_xscale("log")
    par_ax.set_xlabel("trainable parameters (log)")
    fig.suptitle(f"{report['task']} on {report['model']}")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    return path


def write_report(report: dict[str, Any], output: Path) -> None:
    write_json(output / "report.json", {**report, "goals": goals(report)})
    with atomic_path(output / "report.md") as tmp:
        tmp.write_text(markdown(report), encoding="utf-8")
    chart(report, output / "report.png")
