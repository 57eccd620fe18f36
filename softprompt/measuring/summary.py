"""A comparison's numbers: per method its choice, validation score, test mean +- std over seeds and interval.

Built from the selection and test phases' results (``OUTPUT/results/*.json``) and the test labels;
:mod:`softprompt.measuring.report` only lays this out. The goals are checked here on the seed
means, each difference with its paired bootstrap interval, for the soft-prompt method that
validation chose among those compared (prompt tuning, P-tuning, prefix tuning, late prompts).
Prompt engineering's number is the one context validation chose; few-shot's other example draws
of that setting are listed beside it (``draws``), never averaged into it.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import asdict
from typing import Any

import numpy as np
import torch

from softprompt.measuring.classify import VOTES, metrics, vote
from softprompt.measuring.generation import LOWER_IS_BETTER, METRICS, Item, metric_of, row_stats
from softprompt.measuring.methods import Kind
from softprompt.measuring.presets import Preset, TextPreset
from softprompt.measuring.selection import Split
from softprompt.measuring.stats import difference, interval, metric_difference, metric_interval, spread

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
        "kind": "labels",
        **_header(preset, setup, config, split, selections),
        "test_rows": len(gold),
        "majority_class_accuracy": max(gold.count(c) for c in set(gold)) / len(gold),
        "methods": rows,
        "ensemble": _ensemble(tests, selections, gold, len(preset.labels), config.vote),
        "goals": goals(rows, correct),
    }


def _header(preset: Any, setup: Any, config: Any, split: Split, selections: list[dict[str, Any]]) -> dict[str, Any]:
    """What every report starts with: the task, the model, every setting, the split's sizes (and folds)."""
    return {
        "cv_folds": max((int(s.get("cv_folds") or 0) for s in selections), default=0),
        "task": preset.name,
        "model": setup.model,
        "setup": asdict(setup),
        "compare": asdict(config),
        "train_rows": len(split.train),
        "validation_rows": len(split.validation),
    }


def _method_row(selection: dict[str, Any], test: dict[str, Any], gold: list[int]) -> dict[str, Any]:
    row = _selection_row(selection)
    if "error" in row:
        return row
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
        **_test_costs(test),
    )
    if "draw_runs" in test:
        row["draws"] = _draws(selection, test, "accuracy", "val_accuracy")
    return row


def _draws(selection: dict[str, Any], test: dict[str, Any], metric: str, on: str) -> dict[str, Any]:
    """Few-shot's spread over example draws, beside its number: the chosen context's test ``metric`` and each
    other draw's of the same setting (its best order on validation, score ``on``), mean +- std over all."""
    records = [*selection["runs"], *selection.get("draws", [])]
    by_seed = {r["seed"]: r for r in records}
    runs = [
        {
            "seed": r["seed"],
            "chosen": i == 0,
            "settings": by_seed[r["seed"]].get("settings"),
            on: by_seed[r["seed"]].get(on),
            metric: r[metric],
        }
        for i, r in enumerate([test["runs"][0], *test["draw_runs"]])
    ]
    mean, std = spread([r[metric] for r in runs])
    return {"metric": metric, "runs": runs, "mean": mean, "std": std}


def _selection_row(selection: dict[str, Any]) -> dict[str, Any]:
    """What a method's selection chose and cost, whatever the kind of task."""
    row: dict[str, Any] = {"kind": selection.get("kind"), "method": selection.get("method", selection.get("kind"))}
    if "error" in selection:
        return {**row, "error": f"selection: {selection['error']}"}
    chosen = selection["candidates"][selection["chosen"]]
    base = max(selection.get("base_params", 0), 1)
    runs = selection["runs"]
    kept = ("settings", "steps", "best_step", "stopped_early", "train_seconds", "curve", "error")
    row.update(
        chosen=chosen["settings"],
        chosen_spec=chosen["spec"],
        **{key: value for key, value in chosen.items() if key.startswith("val_")},
        candidates=[{k: v for k, v in c.items() if k in kept or k.startswith("val_")} for c in selection["candidates"]],
        seed_runs=[
            {
                **{k: r.get(k) for k in ("seed", "steps", "best_step", "train_seconds", "curve", "error")},
                **{k: v for k, v in r.items() if k.startswith("val_")},
            }
            for r in runs
        ],
        val_seed_mean={k: v for k, v in chosen.items() if k.startswith("val_") and isinstance(v, int | float)}
        if selection.get("cv_folds")  # cross-validated: the folds' mean already chose (seeds run on one fold)
        else _seed_mean(runs),
        trainable_params=selection["trainable_params"],
        trainable_percent=100 * selection["trainable_params"] / base,
        stored_params=selection["stored_params"],
        stored_percent=100 * selection["stored_params"] / base,
        base_params=selection.get("base_params"),
        select_seconds=selection.get("select_seconds", 0.0),
        transfer=selection.get("transfer"),
        select_peak_rss_mb=selection.get("peak_rss_mb"),
        train_seconds=chosen.get("train_seconds", 0.0),
    )
    return row


def _seed_mean(runs: list[dict[str, Any]]) -> dict[str, float]:
    """Each validation score averaged over the seeds' runs: what the report's method choice is made on, so one
    lucky seed does not choose (run 5: the first seed chose the prefix prompt on sst2, the seed-mean the late)."""
    finished = [r for r in runs if "error" not in r]
    keys = {k for r in finished for k, v in r.items() if k.startswith("val_") and isinstance(v, int | float)}
    return {k: statistics.fmean(r[k] for r in finished if k in r) for k in sorted(keys)}


def _test_costs(test: dict[str, Any]) -> dict[str, Any]:
    return {
        "eval_rows": test["eval_rows"],
        "test_seconds": test.get("test_seconds"),
        "test_peak_rss_mb": test.get("test_peak_rss_mb", test.get("peak_rss_mb")),
        "ms_per_example": test.get("ms_per_example"),
        "adapter_bytes": test.get("adapter_bytes"),
    }


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
    tuned = best_on_validation(soft)
    name = f"best soft prompt (chosen on validation, seed mean: {tuned['method']}, {tuned['chosen']})"
    out = []
    engineered = [done[k] for k in PROMPT_ENGINEERING if k in done]
    if engineered:  # the prompt-engineering method chosen on validation, like every other choice
        baseline = best_on_validation(engineered)
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


def best_on_validation(rows: list[dict[str, Any]], key: str = "val_accuracy", lower: bool = False) -> dict[str, Any]:
    """The method with the best validation score averaged over its seeds (then the lower label loss, on labels)."""
    sign = -1.0 if lower else 1.0

    def rank(row: dict[str, Any]) -> tuple[float, float]:
        return sign * _val(row, key), -_val(row, "val_label_loss") if "val_label_loss" in row else 0.0

    return max(rows, key=rank)


def _val(row: dict[str, Any], key: str) -> float:
    """A method's validation score over its seeds (the chosen candidate's own where seeds recorded none)."""
    return float(row.get("val_seed_mean", {}).get(key, row[key]))


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


# ---------------------------------------------------------------------------------------------
# Text tasks

GOAL_TEXT_VS_LORA = -1.0  # points of a generation metric: the best soft prompt >= LoRA - 1
GOAL_CE_VS_LORA = 0.02  # the best soft prompt's reference cross-entropy <= LoRA's x 1.02


def summarise_text(
    preset: TextPreset,
    setup: Any,
    config: Any,
    split: Split,
    selections: list[dict[str, Any]],
    tests: list[dict[str, Any]],
    inputs: list[Item],
) -> dict[str, Any]:
    """A text task's numbers: per method its reference cross-entropy, perplexity, BLEU, chrF and ROUGE-L
    (seed mean, std, 95% bootstrap interval over test inputs), its outputs, and the goals."""
    rows, metrics_of = [], {}
    for selection, test in zip(selections, tests, strict=True):
        row = _selection_row(selection)
        if "error" not in row and "error" in test:
            row["error"] = f"test: {test['error']}"
        if "error" not in row:
            runs = test["runs"]
            n = test["eval_rows"]
            refs = [item.references for item in inputs[:n]]
            stats = [{"nll": np.asarray(r["nll"]), **row_stats(r["outputs"], refs)} for r in runs]
            metrics_of[row["kind"]] = {name: [metric_of(name, s) for s in stats] for name in METRICS}
            found: dict[str, dict[str, Any]] = {}
            for name in METRICS:
                mean, std = spread([r[name] for r in runs])
                low, high = metric_interval(metrics_of[row["kind"]][name], len(stats[0]["nll"]))
                found[name] = {"mean": mean, "std": std, "ci": [low, high], "runs": [r[name] for r in runs]}
            row.update(
                scores=found,
                ppl=math.exp(min(found["ce"]["mean"], 50.0)),
                seeds=[r["seed"] for r in runs],
                outputs=runs[0]["outputs"][: preset.showcase_rows],
                showcase=runs[0].get("showcase", []),
                **_test_costs(test),
            )
            if "draw_runs" in test:
                row["draws"] = _draws(selection, test, preset.primary_metric, f"val_{preset.primary_metric}")
        rows.append(row)
    return {
        "kind": "text",
        **_header(preset, setup, config, split, selections),
        "primary_metric": preset.primary_metric,
        "test_rows": len(inputs),
        "references_per_input": statistics.fmean(len(item.references) for item in inputs),
        "side_by_side": {
            "inputs": [item.text for item in inputs[: preset.showcase_rows]],
            "references": [item.references for item in inputs[: preset.showcase_rows]],
            "showcase": list(preset.showcase),
        },
        "methods": rows,
        "goals": text_goals(rows, metrics_of, preset.primary_metric, len(inputs)),
    }


def text_goals(
    rows: list[dict[str, Any]], metrics_of: dict[str, dict[str, list[Any]]], primary: str, n: int
) -> list[dict[str, Any]]:
    """The best soft prompt (chosen on validation) against LoRA and against the best prompt engineering, on the
    primary metric, with paired 95% intervals over test inputs."""
    done = {r["kind"]: r for r in rows if "scores" in r}
    soft = [done[k] for k in SOFT_PROMPTS if k in done]
    if not soft:
        return []
    key = f"val_{primary}"
    lower = primary in LOWER_IS_BETTER

    tuned = best_on_validation(soft, key, lower)
    name = f"best soft prompt (chosen on validation, seed mean: {tuned['method']}, {tuned['chosen']})"
    out = []
    engineered = [done[k] for k in PROMPT_ENGINEERING if k in done]
    if engineered:
        baseline = best_on_validation(engineered, key, lower)
        a, b = metrics_of[tuned["kind"]][primary], metrics_of[baseline["kind"]][primary]
        value, low, high = metric_difference(b, a, n) if lower else metric_difference(a, b, n)
        met = low > 0
        label = "ahead of" if not lower else "below"
        out.append(
            {
                "goal": f"{name} {label} the best prompt engineering ({baseline['method']}, {baseline['chosen']}) "
                f"on {primary}, the 95% interval excluding zero",
                "value": value,
                "interval": [low, high],
                "met": met,
                "text": f"margin {value:+.3f}, 95% CI [{low:+.3f}, {high:+.3f}] on {n} inputs: "
                + ("met" if met else "not met"),
            }
        )
    lora = done.get(Kind.LORA.value)
    if lora is not None:
        a, b = metrics_of[tuned["kind"]][primary], metrics_of[lora["kind"]][primary]
        value, low, high = metric_difference(a, b, n)
        if lower:
            relative = value / lora["scores"][primary]["mean"]
            met = relative <= GOAL_CE_VS_LORA
            goal = f"{name} {primary} <= LoRA's x {1 + GOAL_CE_VS_LORA:g}"
            text = f"{100 * relative:+.1f}% of LoRA's ({value:+.4f} nats, 95% CI [{low:+.4f}, {high:+.4f}])"
        else:
            met = value >= GOAL_TEXT_VS_LORA
            goal = f"{name} - LoRA >= {GOAL_TEXT_VS_LORA:+.1f} {primary}"
            text = f"{value:+.2f}, 95% CI [{low:+.2f}, {high:+.2f}]"
        out.append(
            {
                "goal": goal,
                "value": value,
                "interval": [low, high],
                "met": met,
                "text": f"{text}: " + ("met" if met else "not met"),
            }
        )
    return out
