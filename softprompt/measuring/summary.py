"""A comparison's numbers: per method its choice, validation score, test mean +- std over seeds and interval.

Built from the selection and test phases' results (``OUTPUT/results/*.json``) and the test labels;
:mod:`softprompt.measuring.report` only lays this out. The goals are checked here on the seed
means, each difference with its paired bootstrap interval, for the soft-prompt method that
validation chose among those compared (prompt tuning, P-tuning, prefix tuning, late prompts).
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import torch

from softprompt.measuring.classify import VOTES, metrics, vote
from softprompt.measuring.methods import Kind
from softprompt.measuring.presets import Preset
from softprompt.measuring.selection import Split
from softprompt.measuring.stats import difference, interval, spread

PROMPT_ENGINEERING = (Kind.ZERO_SHOT.value, Kind.FEW_SHOT.value)
SOFT_PROMPTS = tuple(k.value for k in (Kind.PROMPT_TUNING, Kind.P_TUNING, Kind.PREFIX_TUNING, Kind.LATE_PROMPT))
GOAL_OVER_ENGINEERING = 10.0  # points over the best prompt engineering (or half the distance to 100%, if smaller)
GOAL_VS_LORA = -1.0  # points: the best soft prompt >= LoRA - 1
GOAL_RANK = 4  # the soft prompt trains no more parameters than LoRA of this rank


def summarise(
    preset: Preset,
    setup: Any,
    config: Any,
    split: Split,
    selections: list[dict[str, Any]],
    tests: list[dict[str, Any]],
    gold: list[int],
) -> dict[str, Any]:
    rows, correct = [], {}
    for selection, test in zip(selections, tests, strict=True):
        row = _method_row(selection, test, gold)
        rows.append(row)
        if "test_runs" in row:
            correct[row["kind"]] = [[p == g for p, g in zip(r.pop("predictions"), gold)] for r in row["test_runs"]]
    return {
        "task": preset.name,
        "model": setup.model,
        "setup": asdict(setup),
        "compare": asdict(config),
        "train_rows": len(split.train),
        "validation_rows": len(split.validation),
        "test_rows": len(gold),
        "majority_class_accuracy": max(gold.count(c) for c in set(gold)) / len(gold),
        "methods": rows,
        "ensemble": _ensemble(tests, selections, gold, len(preset.labels), config.vote),
        "goals": goals(rows, correct),
    }


def _method_row(selection: dict[str, Any], test: dict[str, Any], gold: list[int]) -> dict[str, Any]:
    row: dict[str, Any] = {"kind": selection.get("kind"), "method": selection.get("method", selection.get("kind"))}
    if "error" in selection:
        return {**row, "error": f"selection: {selection['error']}"}
    chosen = selection["candidates"][selection["chosen"]]
    base = max(selection.get("base_params", 0), 1)
    runs = selection["runs"]
    row.update(
        chosen=chosen["settings"],
        chosen_spec=chosen["spec"],
        val_accuracy=chosen["val_accuracy"],
        val_macro_f1=chosen["val_macro_f1"],
        val_label_loss=chosen["val_label_loss"],
        candidates=[
            {
                k: c.get(k)
                for k in (
                    "settings",
                    "val_accuracy",
                    "val_label_loss",
                    "steps",
                    "best_step",
                    "stopped_early",
                    "train_seconds",
                    "curve",
                    "error",
                )
            }
            for c in selection["candidates"]
        ],
        seed_runs=[
            {k: r.get(k) for k in ("seed", "val_accuracy", "steps", "best_step", "train_seconds", "curve", "error")}
            for r in runs
        ],
        trainable_params=selection["trainable_params"],
        trainable_percent=100 * selection["trainable_params"] / base,
        stored_params=selection["stored_params"],
        stored_percent=100 * selection["stored_params"] / base,
        base_params=selection.get("base_params"),
        select_seconds=selection.get("select_seconds", 0.0),
        select_peak_rss_mb=selection.get("peak_rss_mb"),
        train_seconds=chosen.get("train_seconds", 0.0),
    )
    if "error" in test:
        return {**row, "error": f"test: {test['error']}"}
    scored = [torch.tensor(r["scores"]) for r in test["runs"]]
    accuracies = [r["accuracy"] for r in test["runs"]]
    f1s = [r["macro_f1"] for r in test["runs"]]
    n = test["eval_rows"]
    predictions = [s.argmax(-1).tolist() for s in scored]
    mean, std = spread(accuracies)
    low, high = interval([[p == g for p, g in zip(pred, gold[:n])] for pred in predictions])
    row.update(
        test_runs=[
            {"seed": r["seed"], "accuracy": r["accuracy"], "macro_f1": r["macro_f1"], "predictions": p}
            for r, p in zip(test["runs"], predictions, strict=True)
        ],
        accuracy=mean,
        accuracy_std=std,
        accuracy_ci=[low, high],
        macro_f1=spread(f1s)[0],
        macro_f1_std=spread(f1s)[1],
        eval_rows=n,
        test_seconds=test.get("test_seconds"),
        test_peak_rss_mb=test.get("peak_rss_mb"),
        ms_per_example=test.get("ms_per_example"),
        adapter_bytes=test.get("adapter_bytes"),
    )
    return row


def _ensemble(
    tests: list[dict[str, Any]], selections: list[dict[str, Any]], gold: list[int], labels: int, how: str
) -> dict[str, Any] | None:
    """Vote over prompt tuning's seed prompts on the test rows: one more number, chosen by nothing."""
    for selection, test in zip(selections, tests, strict=True):
        if selection.get("kind") != Kind.PROMPT_TUNING.value or "runs" not in test or len(test["runs"]) < 2:
            continue
        scores = torch.tensor([r["scores"] for r in test["runs"]])  # [M, N, K]
        found = {kind: metrics(vote(scores, kind).tolist(), gold[: scores.shape[1]], labels) for kind in VOTES}
        return {"members": [f"seed {r['seed']}" for r in test["runs"]], "vote": how, **found, **found[how]}
    return None


def goals(rows: list[dict[str, Any]], correct: dict[str, list[list[bool]]]) -> list[dict[str, Any]]:
    """The goals on these numbers, for the soft-prompt method validation chose: point estimates (percentage
    points) with paired 95% intervals."""
    done = {r["kind"]: r for r in rows if "accuracy" in r}
    soft = [done[k] for k in SOFT_PROMPTS if k in done]
    if not soft:
        return []
    tuned = _chosen(soft)
    name = f"best soft prompt (chosen on validation: {tuned['method']}, {tuned['chosen']})"
    out = []
    engineered = [done[k] for k in PROMPT_ENGINEERING if k in done]
    if engineered:  # the prompt-engineering method chosen on validation, like every other choice
        baseline = _chosen(engineered)
        target = min(GOAL_OVER_ENGINEERING, (100 - 100 * baseline["accuracy"]) / 2)
        out.append(
            _gap(
                f"{name} - best prompt engineering (chosen on validation: {baseline['method']}, {baseline['chosen']})",
                tuned,
                baseline,
                correct,
                target,
            )
        )
    lora = done.get(Kind.LORA.value)
    if lora is not None:
        out.append(_gap(f"{name} - LoRA", tuned, lora, correct, GOAL_VS_LORA))
        rank = int(lora.get("chosen_spec", {}).get("rank") or GOAL_RANK)
        limit = lora["trainable_params"] * GOAL_RANK // rank
        out.append(
            {
                "goal": f"best soft prompt's trainable parameters <= LoRA rank {GOAL_RANK}'s",
                "value": tuned["trainable_params"],
                "met": tuned["trainable_params"] <= limit,
                "text": f"{tuned['trainable_params']:,} trainable ({tuned['trainable_percent']:.4f}% of the model) "
                f"vs {limit:,} for LoRA rank {GOAL_RANK}; the adapter stores {tuned['stored_params']:,}",
            }
        )
    return out


def _chosen(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The method with the best validation accuracy, then the lower validation loss."""
    return max(rows, key=lambda r: (r["val_accuracy"], -r["val_label_loss"]))


def _gap(
    name: str, a: dict[str, Any], b: dict[str, Any], correct: dict[str, list[list[bool]]], target: float
) -> dict[str, Any]:
    rows = min(a["eval_rows"], b["eval_rows"])  # a slow method may have scored only the first rows
    value, low, high = difference([r[:rows] for r in correct[a["kind"]]], [r[:rows] for r in correct[b["kind"]]])
    value, low, high = 100 * value, 100 * low, 100 * high
    verdict = "met" if value >= target else "not met"
    sure = " (the interval clears it)" if low >= target else ""
    return {
        "goal": f"{name} >= {target:+.1f} points",
        "value": value,
        "interval": [low, high],
        "target": target,
        "rows": rows,
        "met": value >= target,
        "text": f"{value:+.1f} points, 95% CI [{low:+.1f}, {high:+.1f}] on {rows} rows: {verdict}{sure}",
    }
