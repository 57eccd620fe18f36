"""A comparison's numbers: per method its choice, validation score, test mean +- std over seeds and interval.

Built from the selection and test phases' results (``OUTPUT/results/*.json``, read as
:mod:`softprompt.measuring.records`) and the test labels; :mod:`softprompt.measuring.report` only lays
this out. The goals are checked here on the seed means, each difference with its paired bootstrap
interval, for the soft-prompt method that validation chose among those compared (prompt tuning,
P-tuning, prefix tuning, late prompts). Prompt engineering's number is the one context validation
chose; few-shot's other example draws of that setting are listed beside it (``draws``), never averaged
into it.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any, TypeVar

import numpy as np
import torch

from softprompt.measuring.classify import VOTES, metrics, vote
from softprompt.measuring.generation import LOWER_IS_BETTER, METRICS, Item, metric_of, row_stats
from softprompt.measuring.methods import METHOD_NAMES, Kind
from softprompt.measuring.presets import Preset, TextPreset
from softprompt.measuring.records import Accuracy, Failed, LabelTested, Outcome, Selection, TextTested, Trial
from softprompt.measuring.report_records import (
    Done,
    Draws,
    DrawScore,
    Ensemble,
    FailedRow,
    Goal,
    Header,
    LabelReport,
    LabelResult,
    LabelRow,
    Score,
    Selected,
    SideBySide,
    TextReport,
    TextResult,
    TextRow,
)
from softprompt.measuring.selection import Split
from softprompt.measuring.stats import Metric, difference, interval, metric_difference, metric_interval, spread

PROMPT_ENGINEERING = (Kind.ZERO_SHOT, Kind.FEW_SHOT)
SOFT_PROMPTS = (Kind.PROMPT_TUNING, Kind.P_TUNING, Kind.PREFIX_TUNING, Kind.LATE_PROMPT)
GOAL_OVER_ENGINEERING = 10.0  # points over the best prompt engineering (or half the distance to 100%, if smaller)
GOAL_VS_LORA = -1.0  # points: the best soft prompt >= LoRA - 1
GOAL_RANK = 4  # the soft prompt trains no more parameters than LoRA of this rank

D = TypeVar("D", bound=Done)


def summarise(
    preset: Preset,
    setup: Any,
    config: Any,
    split: Split,
    outcomes: Sequence[Outcome[LabelTested]],
    gold: list[int],
) -> LabelReport:
    rows: list[LabelRow | FailedRow] = []
    correct: dict[Kind, list[list[bool]]] = {}
    for outcome in outcomes:
        selection, test = outcome.selection, outcome.test
        if not isinstance(selection, Selection) or not isinstance(test, LabelTested):
            rows.append(_failed(outcome))
            continue
        predictions = [torch.tensor(r.scores).argmax(-1).tolist() for r in test.runs]
        correct[outcome.kind] = [[p == g for p, g in zip(pred, gold)] for pred in predictions]
        tested = _label_result(selection, test, predictions, gold)
        rows.append(
            LabelRow(kind=selection.kind, method=selection.method, selected=_selected(selection), tested=tested)
        )
    return LabelReport(
        header=_header(preset, setup, config, split, outcomes),
        test_rows=len(gold),
        majority_class_accuracy=max(gold.count(c) for c in set(gold)) / len(gold),
        methods=tuple(rows),
        ensemble=_ensemble(outcomes, gold, len(preset.labels), config.vote),
        goals=tuple(goals(rows, correct)),
    )


def _header(
    preset: Preset | TextPreset, setup: Any, config: Any, split: Split, outcomes: Sequence[Outcome[Any]]
) -> Header:
    """What every report starts with: the task, the model, every setting, the split's sizes (and folds)."""
    folds = [o.selection.cv_folds or 0 for o in outcomes if isinstance(o.selection, Selection)]
    return Header(
        cv_folds=max(folds, default=0),
        task=preset.name,
        model=setup.model,
        setup=asdict(setup),
        compare=asdict(config),
        train_rows=len(split.train),
        validation_rows=len(split.validation),
    )


def _failed(outcome: Outcome[Any]) -> FailedRow:
    """A method whose selection or test failed: why (and what it chose, when only its test failed)."""
    selection, test = outcome.selection, outcome.test
    if isinstance(selection, Failed):
        return FailedRow(kind=outcome.kind, method=METHOD_NAMES[outcome.kind], error=f"selection: {selection.error}")
    error = test.error if isinstance(test, Failed) else "not run"
    return FailedRow(
        kind=selection.kind, method=selection.method, selected=_selected(selection), error=f"test: {error}"
    )


def _selected(selection: Selection) -> Selected:
    """What a method's selection chose and cost, whatever the kind of task."""
    found = selection.found
    chosen = found.choice
    base = max(found.base_params, 1)
    return Selected(
        chosen=chosen.settings,
        chosen_spec=chosen.spec,
        validation=chosen.validation,
        # cross-validated: the folds' mean already chose (the seeds run on one fold)
        val_seed_mean=chosen.validation if selection.cv_folds else _seed_mean(found.runs),
        candidates=found.candidates,  # written as ReportedTrial: no contexts, specs or fold scores
        seed_runs=found.runs,
        trainable_params=found.trainable_params,
        trainable_percent=100 * found.trainable_params / base,
        stored_params=found.stored_params,
        stored_percent=100 * found.stored_params / base,
        base_params=found.base_params,
        select_seconds=selection.select_seconds,
        select_peak_rss_mb=selection.peak_rss_mb,
        train_seconds=chosen.train_seconds or 0.0,
        transfer=found.transfer,
    )


def _seed_mean(runs: Sequence[Trial]) -> dict[str, float]:
    """Each validation score averaged over the seeds' runs: what the report's method choice is made on, so one
    lucky seed does not choose (run 5: the first seed chose the prefix prompt on sst2, the seed-mean the late)."""
    finished = [r for r in runs if not r.failed]
    keys = {k for r in finished for k in r.validation}
    return {k: statistics.fmean(r.validation[k] for r in finished if k in r.validation) for k in sorted(keys)}


def _label_result(
    selection: Selection, test: LabelTested, predictions: list[list[int]], gold: list[int]
) -> LabelResult:
    """Test accuracy over seeds with its interval over test rows, macro-F1, costs; few-shot's other draws apart."""
    n = test.costs.eval_rows
    mean, std = spread([r.accuracy for r in test.runs])
    f1, f1_std = spread([r.macro_f1 for r in test.runs])
    return LabelResult(
        test_runs=test.runs,  # written as SeedAccuracy: the label scores stay in the test phase's file
        accuracy=mean,
        accuracy_std=std,
        accuracy_ci=interval([[p == g for p, g in zip(pred, gold[:n])] for pred in predictions]),
        macro_f1=f1,
        macro_f1_std=f1_std,
        costs=test.costs,
        test_peak_rss_mb=test.peak_rss_mb,
        draws=None
        if test.draw_runs is None
        else _draws(selection, [(r.seed, r.accuracy) for r in (test.runs[0], *test.draw_runs)], "accuracy"),
    )


def _draws(selection: Selection, tested: Sequence[tuple[int, float]], metric: str) -> Draws:
    """Few-shot's spread over example draws, beside its number: ``tested`` holds (seed, test ``metric``) of the
    chosen context, then of each other draw of its setting (in its best order on validation)."""
    found = selection.found
    by_seed = {t.seed: t for t in (*found.runs, *(found.draws or ()))}
    runs = tuple(
        DrawScore(
            seed=seed,
            chosen=i == 0,
            settings=by_seed[seed].settings,
            validation=by_seed[seed].validation,
            test={metric: value},
        )
        for i, (seed, value) in enumerate(tested)
    )
    mean, std = spread([value for _, value in tested])
    return Draws(metric=metric, runs=runs, mean=mean, std=std)


def _ensemble(outcomes: Sequence[Outcome[LabelTested]], gold: list[int], labels: int, how: str) -> Ensemble | None:
    """Vote over prompt tuning's seed prompts on the test rows: one more number, chosen by nothing."""
    for outcome in outcomes:
        test = outcome.test
        if outcome.kind is not Kind.PROMPT_TUNING or not isinstance(test, LabelTested) or len(test.runs) < 2:
            continue
        scores = torch.tensor([r.scores for r in test.runs])  # [M, N, K]
        found = {}
        for kind in VOTES:
            voted = metrics(vote(scores, kind).tolist(), gold[: scores.shape[1]], labels)
            found[kind] = Accuracy(accuracy=voted["accuracy"], macro_f1=voted["macro_f1"])
        members = tuple(f"seed {r.seed}" for r in test.runs)
        return Ensemble(members=members, vote=how, mean=found["mean"], majority=found["majority"], voted=found[how])
    return None


def goals(rows: Sequence[LabelRow | FailedRow], correct: dict[Kind, list[list[bool]]]) -> list[Goal]:
    """The goals on these numbers, for the soft-prompt method validation chose: point estimates (percentage
    points) with paired 95% intervals."""
    done = {r.kind: r for r in rows if isinstance(r, LabelRow)}
    soft = [done[k] for k in SOFT_PROMPTS if k in done]
    if not soft:
        return []
    tuned = best_on_validation(soft)
    name = f"best soft prompt (chosen on validation, seed mean: {tuned.method}, {tuned.selected.chosen})"
    out = []
    engineered = [done[k] for k in PROMPT_ENGINEERING if k in done]
    if engineered:  # the prompt-engineering method chosen on validation, like every other choice
        baseline = best_on_validation(engineered)
        target = min(GOAL_OVER_ENGINEERING, (100 - 100 * baseline.tested.accuracy) / 2)
        chose = f"chosen on validation: {baseline.method}, {baseline.selected.chosen}"
        out.append(_gap(f"{name} - best prompt engineering ({chose})", tuned, baseline, correct, target))
    lora = done.get(Kind.LORA)
    if lora is not None:
        out.append(_gap(f"{name} - LoRA", tuned, lora, correct, GOAL_VS_LORA))
        limit = lora.selected.trainable_params * GOAL_RANK // (lora.selected.chosen_spec.rank or GOAL_RANK)
        soft_prompt = tuned.selected
        out.append(
            Goal(
                goal=f"best soft prompt's trainable parameters <= LoRA rank {GOAL_RANK}'s",
                value=soft_prompt.trainable_params,
                met=soft_prompt.trainable_params <= limit,
                text=f"{soft_prompt.trainable_params:,} trainable ({soft_prompt.trainable_percent:.4f}% of the model) "
                f"vs {limit:,} for LoRA rank {GOAL_RANK}; the adapter stores {soft_prompt.stored_params:,}",
            )
        )
    return out


def best_on_validation(rows: Sequence[D], key: str = "val_accuracy", lower: bool = False) -> D:
    """The method with the best validation score averaged over its seeds (then the lower label loss, on labels)."""
    sign = -1.0 if lower else 1.0

    def rank(row: D) -> tuple[float, float]:
        chosen = row.selected
        tie = -_val(chosen, "val_label_loss") if "val_label_loss" in chosen.validation else 0.0
        return sign * _val(chosen, key), tie

    return max(rows, key=rank)


def _val(chosen: Selected, key: str) -> float:
    """A method's validation score over its seeds (the chosen candidate's own where seeds recorded none)."""
    return float(chosen.val_seed_mean.get(key, chosen.validation[key]))


def _gap(name: str, a: LabelRow, b: LabelRow, correct: dict[Kind, list[list[bool]]], target: float) -> Goal:
    rows = min(a.tested.costs.eval_rows, b.tested.costs.eval_rows)  # a slow method may have scored only the first
    value, low, high = difference([r[:rows] for r in correct[a.kind]], [r[:rows] for r in correct[b.kind]])
    value, low, high = 100 * value, 100 * low, 100 * high
    verdict = "met" if value >= target else "not met"
    sure = " (the interval clears it)" if low >= target else ""
    return Goal(
        goal=f"{name} >= {target:+.1f} points",
        value=value,
        interval=(low, high),
        target=target,
        rows=rows,
        met=value >= target,
        text=f"{value:+.1f} points, 95% CI [{low:+.1f}, {high:+.1f}] on {rows} rows: {verdict}{sure}",
    )


# ---------------------------------------------------------------------------------------------
# Text tasks

GOAL_TEXT_VS_LORA = -1.0  # points of a generation metric: the best soft prompt >= LoRA - 1
GOAL_CE_VS_LORA = 0.02  # the best soft prompt's reference cross-entropy <= LoRA's x 1.02


def summarise_text(
    preset: TextPreset,
    setup: Any,
    config: Any,
    split: Split,
    outcomes: Sequence[Outcome[TextTested]],
    inputs: list[Item],
) -> TextReport:
    """A text task's numbers: per method its reference cross-entropy, perplexity, BLEU, chrF and ROUGE-L
    (seed mean, std, 95% bootstrap interval over test inputs), its outputs, and the goals."""
    rows: list[TextRow | FailedRow] = []
    metrics_of: dict[Kind, dict[str, list[Metric]]] = {}
    for outcome in outcomes:
        selection, test = outcome.selection, outcome.test
        if not isinstance(selection, Selection) or not isinstance(test, TextTested):
            rows.append(_failed(outcome))
            continue
        tested, metrics_of[outcome.kind] = _text_result(selection, test, preset, inputs)
        rows.append(TextRow(kind=selection.kind, method=selection.method, selected=_selected(selection), tested=tested))
    shown = inputs[: preset.showcase_rows]
    return TextReport(
        header=_header(preset, setup, config, split, outcomes),
        primary_metric=preset.primary_metric,
        test_rows=len(inputs),
        references_per_input=statistics.fmean(len(item.references) for item in inputs),
        side_by_side=SideBySide(
            inputs=tuple(item.text for item in shown),
            references=tuple(tuple(item.references) for item in shown),
            showcase=tuple(preset.showcase),
        ),
        methods=tuple(rows),
        goals=tuple(text_goals(rows, metrics_of, preset.primary_metric, len(inputs))),
    )


def _text_result(
    selection: Selection, test: TextTested, preset: TextPreset, inputs: list[Item]
) -> tuple[TextResult, dict[str, list[Metric]]]:
    """Every metric over seeds with its interval over test inputs, the first seed's outputs, costs; and each
    seed's metrics as functions of a resample of inputs (for the goals' paired intervals)."""
    runs, primary = test.runs, preset.primary_metric
    refs = [item.references for item in inputs[: test.costs.eval_rows]]
    stats = [{"nll": np.asarray(r.nll), **row_stats(r.outputs, refs)} for r in runs]
    metrics_of = {name: [metric_of(name, s) for s in stats] for name in METRICS}
    scores = {}
    for name in METRICS:
        mean, std = spread([r.metrics[name] for r in runs])
        ci = metric_interval(metrics_of[name], len(stats[0]["nll"]))
        scores[name] = Score(mean=mean, std=std, ci=ci, runs=tuple(r.metrics[name] for r in runs))
    result = TextResult(
        scores=scores,
        ppl=math.exp(min(scores["ce"].mean, 50.0)),
        seeds=tuple(r.seed for r in runs),
        outputs=runs[0].outputs[: preset.showcase_rows],
        showcase=runs[0].showcase,
        costs=test.costs,
        test_peak_rss_mb=test.peak_rss_mb,
        draws=None
        if test.draw_runs is None
        else _draws(selection, [(r.seed, r.metrics[primary]) for r in (runs[0], *test.draw_runs)], primary),
    )
    return result, metrics_of


def text_goals(
    rows: Sequence[TextRow | FailedRow], metrics_of: dict[Kind, dict[str, list[Metric]]], primary: str, n: int
) -> list[Goal]:
    """The best soft prompt (chosen on validation) against LoRA and against the best prompt engineering, on the
    primary metric, with paired 95% intervals over test inputs."""
    done = {r.kind: r for r in rows if isinstance(r, TextRow)}
    soft = [done[k] for k in SOFT_PROMPTS if k in done]
    if not soft:
        return []
    key = f"val_{primary}"
    lower = primary in LOWER_IS_BETTER

    tuned = best_on_validation(soft, key, lower)
    name = f"best soft prompt (chosen on validation, seed mean: {tuned.method}, {tuned.selected.chosen})"
    out = []
    engineered = [done[k] for k in PROMPT_ENGINEERING if k in done]
    if engineered:
        baseline = best_on_validation(engineered, key, lower)
        a, b = metrics_of[tuned.kind][primary], metrics_of[baseline.kind][primary]
        value, low, high = metric_difference(b, a, n) if lower else metric_difference(a, b, n)
        met = low > 0
        label = "ahead of" if not lower else "below"
        out.append(
            Goal(
                goal=f"{name} {label} the best prompt engineering ({baseline.method}, {baseline.selected.chosen}) "
                f"on {primary}, the 95% interval excluding zero",
                value=value,
                interval=(low, high),
                met=met,
                text=f"margin {value:+.3f}, 95% CI [{low:+.3f}, {high:+.3f}] on {n} inputs: "
                + ("met" if met else "not met"),
            )
        )
    lora = done.get(Kind.LORA)
    if lora is not None:
        a, b = metrics_of[tuned.kind][primary], metrics_of[lora.kind][primary]
        value, low, high = metric_difference(a, b, n)
        if lower:
            relative = value / lora.tested.scores[primary].mean
            met = relative <= GOAL_CE_VS_LORA
            goal = f"{name} {primary} <= LoRA's x {1 + GOAL_CE_VS_LORA:g}"
            text = f"{100 * relative:+.1f}% of LoRA's ({value:+.4f} nats, 95% CI [{low:+.4f}, {high:+.4f}])"
        else:
            met = value >= GOAL_TEXT_VS_LORA
            goal = f"{name} - LoRA >= {GOAL_TEXT_VS_LORA:+.1f} {primary}"
            text = f"{value:+.2f}, 95% CI [{low:+.2f}, {high:+.2f}]"
        out.append(
            Goal(
                goal=goal, value=value, interval=(low, high), met=met, text=f"{text}: " + ("met" if met else "not met")
            )
        )
    return out
