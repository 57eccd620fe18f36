"""One method's selection, on validation rows only: try its candidates, keep the best, rerun it with more seeds.

Every trained method gets the same effort: the same number of candidates (the search budget), the
same budget for each (training seconds, or steps), the same early stopping (validation loss every ``eval_every`` steps,
``patience`` scores without improvement, the best weights kept). Candidates are tried with the
first seed; the one with the best validation accuracy (then label cross-entropy) is trained again
with every other seed, each run again stopped on validation. Prompt engineering chooses the same
way among instruction or not, numbers of shots, example draws (one per seed: the seed that picks
the examples) and example orders; the context chosen is the artifact, its one run, as a user
deploys it. The other draws of the chosen setting (each in its best order on validation) are kept
apart, to show on test how much the draw matters; they never enter the method's score.

Prompt-tuning candidates train together, in shared passes (:func:`softprompt.training.train.train_sweep`),
and are scored together (one engine pass, a member per prompt). Only the training file is read here.
"""

from __future__ import annotations

import gc
import logging
import shutil
import statistics
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import TypeAdapter

from softprompt.core.data import DataConfig, Example, Row, tokenize_rows
from softprompt.core.frozen import FrozenModel
from softprompt.core.library import Choice, choose
from softprompt.core.prompt import Init, PromptConfig
from softprompt.core.prompted import SoftPromptModel
from softprompt.measuring.classify import classify_rows
from softprompt.measuring.generation import GENERATION_METRICS, Writer, items, reference_nll, row_stats
from softprompt.measuring.generation import scores as text_scores
from softprompt.measuring.methods import PROMPTS, Kind, MethodSpec
from softprompt.measuring.methods.build import context_for, prompt_config, save_context, weights_model, writer_of
from softprompt.measuring.presets import TARGET_COLUMN, AnyPreset, Preset, load_preset, load_train_rows
from softprompt.measuring.records import Found, Point, Selection, Transfer, Trial, from_json
from softprompt.measuring.selection import best
from softprompt.training.train import Candidate, SweepResult, TrainConfig, TrainResult, train, train_sweep

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SearchJob:
    """What one method's selection needs besides the run setup: its candidates, seeds, split and stopping rule."""

    kind: Kind
    candidates: tuple[MethodSpec, ...]
    seeds: tuple[int, ...]
    train_index: tuple[int, ...]  # rows of the training file that train
    validation_index: tuple[int, ...]  # rows of the training file that validate
    eval_every: int
    patience: int
    eval_every_seconds: float = 0.0
    joint: bool = True  # soft-prompt candidates train together in shared passes (else one at a time)
    library: str | None = None  # prompts an init=library candidate starts from (core.library)
    folds: tuple[tuple[tuple[int, ...], tuple[int, ...]], ...] = ()  # cross-validation: the other folds' rows


# A job crosses to compare's child process as JSON: written and read by one library, checked on the way in
# (MethodSpec's own checks included), so a field added here needs no hand-written parsing anywhere.
JOB = TypeAdapter(SearchJob)


def job_to_json(job: SearchJob) -> dict[str, Any]:
    return dict(JOB.dump_python(job, mode="json"))


def job_from_json(raw: Any) -> SearchJob:
    return JOB.validate_python(raw)


@dataclass
class Task:
    """The job's rows, read from the training file alone, and how a method is scored on its validation rows."""

    preset: AnyPreset
    train: list[Row]
    validation: list[Row]
    setup: Any  # RunSetup (run.py imports this module)

    def examples(self, rows: list[Row], base: FrozenModel) -> list[Example]:
        data = data_config(self.setup, self.preset)
        return tokenize_rows(self.preset.with_target(rows, self.setup.data), data, base.tokenizer, self.setup.data)

    @property
    def objective(self) -> tuple[str, bool]:
        """The validation score choices are made on, and whether higher is better."""
        return ("val_accuracy", True) if isinstance(self.preset, Preset) else self.preset.selects_on

    def rank(self, scores: Mapping[str, float]) -> tuple[float, float]:
        """Validation scores as (higher is better, lower breaks ties): accuracy then label loss, or the text metric
        then reference CE."""
        key, higher = self.objective
        tie = "val_label_loss" if isinstance(self.preset, Preset) else "val_ce"
        return (scores[key] if higher else -scores[key], scores[tie])

    def from_library(self, config: PromptConfig, base: FrozenModel) -> Choice:
        """init=library: every fitting library prompt scored on validation as the start it gives, in one pass
        (a member each); the best by this task's objective starts training."""

        def rank(scores: dict[str, float]) -> tuple[float, float]:
            higher, tie = self.rank(scores)
            return higher, -tie

        return choose(config, base, lambda starts: self.validate(Writer(base, list(starts))), rank)

    def validate(self, writer: Writer) -> list[dict[str, float]]:
        """Per member: rank classification's accuracy, macro-F1 and label cross-entropy; or a text task's
        reference cross-entropy, and its generation metrics when validation selects on one."""
        preset = self.preset
        if isinstance(preset, Preset):
            found = classify_rows(
                writer.scorer(), writer.base, preset, self.validation, self.setup.eval_batch_size, "validation row"
            )
            return [{f"val_{key}": value for key, value in m.items()} for m in found.member_metrics()]
        inputs = items(preset, self.validation, "validation row")
        nll = reference_nll(writer, preset, inputs, self.setup.max_length, self.setup.eval_batch_size)
        stats: list[dict[str, np.ndarray]] = [{"nll": member} for member in nll]
        if preset.primary_metric in GENERATION_METRICS:
            refs = [item.references for item in inputs]
            for member, outputs in zip(stats, writer.write([item.text for item in inputs], preset), strict=True):
                member.update(row_stats(outputs, refs))
        return [{f"val_{key}": value for key, value in text_scores(member).items()} for member in stats]


def data_config(setup: Any, preset: AnyPreset) -> DataConfig:
    """How compare reads a task's rows for training (what an adapter's card records as its data)."""
    return DataConfig(
        data=setup.data, template=preset.template, target_column=TARGET_COLUMN, max_length=setup.max_length
    )


def run_info(setup: Any, preset: AnyPreset) -> dict[str, Any]:
    """What a compare-trained adapter's model card says about its run."""
    return {"model": setup.model, "task": preset.name, "data": asdict(data_config(setup, preset))}


def search(job: SearchJob, setup: Any) -> Selection:
    """Run one method's selection: every candidate, the choice and every seed's run."""
    preset = load_preset(setup.preset)
    rows = load_train_rows(preset, setup.data, setup.train_rows)
    splits = [(job.train_index, job.validation_index), *job.folds]
    folds = [Task(preset, [rows[i] for i in train], [rows[i] for i in held], setup) for train, held in splits]
    task = folds[0]
    directory = Path(setup.output) / "runs" / job.kind.value
    started = time.perf_counter()
    if job.kind in (Kind.ZERO_SHOT, Kind.FEW_SHOT):
        found = _prompt_engineering(job, task, directory)
    elif job.kind in PROMPTS:
        found = _prompts(job, folds, directory)
    else:
        found = _weights(job, folds, directory)
    return Selection(
        kind=job.kind,
        method=job.candidates[0].method,
        train_rows=len(task.train),
        validation_rows=len(task.validation),
        cv_folds=len(folds) if len(folds) > 1 else None,  # plan gives folds to trained methods only
        select_seconds=time.perf_counter() - started,
        found=found,
    )


def _prompt_engineering(job: SearchJob, task: Task, directory: Path) -> Found:
    """Zero-shot: instruction or not, one deterministic context. Few-shot: every instruction x shots x draw x
    order; the best context on validation is the one run, and the best-order context of each other draw of
    its setting goes to ``draws``, tested apart."""
    base = _load(task.setup)
    draws = job.seeds if job.kind is Kind.FEW_SHOT else job.seeds[:1]  # zero-shot draws nothing
    scores: dict[str, dict[str, float]] = {}

    def tried(spec: MethodSpec, seed: int) -> tuple[str, Trial]:
        """Each distinct context scored once: settings that give the same text (one shot per class in a
        different "order", two draws of the same examples) would only repeat its validation numbers."""
        context = context_for(spec, task.preset, task.train, seed)
        if context not in scores:
            (scores[context],) = task.validate(Writer(base, [None], context))
        settings = f"{spec.settings}, draw {seed}" if spec.kind is Kind.FEW_SHOT else spec.settings
        return context, Trial(
            spec=spec,
            seed=seed,
            settings=settings,
            validation=scores[context],
            context=context,
            context_chars=len(context),
        )

    distinct: dict[str, Trial] = {}
    for seed in draws:
        for spec in job.candidates:
            context, trial = tried(spec, seed)
            distinct.setdefault(context, trial)
    candidates = list(distinct.values())
    chosen = _best(candidates, task)
    spec = candidates[chosen].spec
    orders = sorted({c.order for c in job.candidates if replace(c, order=0) == replace(spec, order=0)})
    others = []
    for seed in (d for d in draws if d != candidates[chosen].seed):
        variants = [tried(replace(spec, order=order), seed)[1] for order in orders]
        others.append(variants[_best(variants, task)])
    candidates[chosen] = run = _saved(candidates[chosen], directory / f"seed{candidates[chosen].seed}")
    return Found(
        candidates=tuple(candidates),
        chosen=chosen,
        runs=(run,),
        draws=tuple(_saved(other, directory / f"draw{other.seed}") for other in others)
        if job.kind is Kind.FEW_SHOT
        else None,
        trainable_params=0,
        stored_params=0,
        base_params=_params(base),
    )


def _saved(trial: Trial, directory: Path) -> Trial:
    """A prompt-engineering trial with its context saved as its artifact (``prompt.txt``)."""
    return replace(trial, artifact=str(save_context(directory, trial.context or "")))


def _train_config(job: SearchJob, setup: Any, spec: MethodSpec, seed: int, output: Path) -> TrainConfig:
    """``softprompt train``'s settings for one run of a comparison: its budget, in steps or training seconds.

    ``budget`` 0 makes the budget time alone (``max_seconds``): steps are unbounded inside it, the
    schedule spans it and validation comes every ``eval_every_seconds``, so every method gets the
    same seconds of this machine whatever its speed per step.
    """
    by_time = not setup.budget
    return TrainConfig(
        output=str(output),
        lr=spec.lr,
        epochs=0,
        max_steps=setup.budget,
        max_seconds=setup.max_seconds,
        batch_size=setup.batch_size,
        seed=seed,
        scheduler=spec.scheduler,
        eval_every=0 if by_time else job.eval_every or setup.budget,  # at least once, at the end
        eval_every_seconds=job.eval_every_seconds if by_time else 0.0,
        early_stopping=job.patience,
        eval_batch_size=setup.eval_batch_size,
        group_by_length=False,
        progress=False,
        checkpoints=False,
    )


def _validation_measure(task: Task) -> Any:
    """The loop's hook at each validation: accuracy of what the run holds then (the curve compare plots)."""

    def measure(loop: Any) -> dict[str, float]:
        (found,) = task.validate(writer_of(loop.model))
        return found

    return measure


def _scored(result: TrainResult) -> dict[str, float]:
    """The validation scores of the state a run ended with, when its last or kept evaluation measured them
    (the run's own record of them: :func:`softprompt.training.train.provenance`)."""
    kept = result.metrics.get("validation", {})
    return {key: value for key, value in kept.items() if key.startswith("val_")} if "val_accuracy" in kept else {}


def _run_record(
    spec: MethodSpec,
    seed: int,
    scores: dict[str, float],
    result: TrainResult,
    task: Task,
    init_from: str | None = None,
) -> Trial:
    """What a search keeps of a trained run: validation scores, budget spent, and its validation curve
    (step, training seconds, validation loss, the score choices are made on), read from the run's own record."""
    records = result.records
    steps = [r for r in records if "loss" in r]
    curve = tuple(
        Point(r["step"], r.get("elapsed", 0.0), r["eval_loss"], r.get(task.objective[0]))
        for r in records
        if r.get("eval_loss") is not None
    )
    return Trial(
        spec=spec,
        seed=seed,
        settings=spec.settings,
        validation=scores,
        artifact=str(result.output),
        steps=len(steps),
        best_step=int(result.metrics["best_step"]),
        train_seconds=float(result.metrics["train_seconds"]),
        curve=curve,
        stopped_early=bool(result.metrics["stopped_early"]),
        init_from=init_from,
    )


def _prompts(job: SearchJob, folds: list[Task], directory: Path) -> Found:
    """Prompt tuning, P-tuning, prefix tuning, late prompts: every candidate a soft prompt, trained together."""
    task = folds[0]
    base = _load(task.setup)
    transfers: dict[tuple[Any, ...], Choice] = {}  # one library choice per form, entry layer and length
    tokenized: dict[int, tuple[list[Example], list[Example]]] = {}  # per fold: the first fold trains twice

    def start(spec: MethodSpec) -> tuple[PromptConfig, dict[str, Any], Choice | None]:
        """The prompt a candidate trains, its card's run information and (init library) which prompt won."""
        config = prompt_config(spec, task.preset, base, job.library)
        info = run_info(task.setup, task.preset)
        if config.init is not Init.LIBRARY:
            return config, info, None
        key = (config.form, config.entry_layer, config.num_virtual_tokens)
        if key not in transfers:
            transfers[key] = task.from_library(config, base)
        choice = transfers[key]
        return choice.config(config), {**info, "init_from": choice.record()}, choice

    def sweep(runs: list[tuple[MethodSpec, int]], names: list[str], fold: Task) -> list[Trial]:
        if id(fold) not in tokenized:
            tokenized[id(fold)] = fold.examples(fold.train, base), fold.examples(fold.validation, base)
        train_set, validation = tokenized[id(fold)]
        measure = _validation_measure(fold)
        started = [start(s) for s, _ in runs]
        models = [
            SoftPromptModel.with_new_prompt(base, config, seed=seed)
            for (config, _, _), (_, seed) in zip(started, runs, strict=True)
        ]
        configs = [
            _train_config(job, task.setup, s, seed, directory / name)
            for (s, seed), name in zip(runs, names, strict=True)
        ]
        candidates = [
            Candidate(m, c, info, measure) for m, c, (_, info, _) in zip(models, configs, started, strict=True)
        ]
        if job.joint:
            result = train_sweep(candidates, train_set, validation)
        else:  # each alone: sweeps of one, the same loop and accounting
            alone = [train_sweep([c], train_set, validation) for c in candidates]
            result = SweepResult(
                [r.results[0] for r in alone], sum(r.seconds for r in alone), sum(r.train_tokens for r in alone)
            )
        unscored = [i for i, r in enumerate(result.results) if not isinstance(r, Exception) and not _scored(r)]
        prompts = [models[i].require_prompt().frozen() for i in unscored]
        by_run = dict(zip(unscored, fold.validate(Writer(base, list(prompts))) if prompts else [], strict=True))
        trials = []
        for i, ((spec, seed), outcome) in enumerate(zip(runs, result.results, strict=True)):
            if isinstance(outcome, Exception):
                trials.append(Trial(spec=spec, seed=seed, settings=spec.settings, error=str(outcome)))
                continue
            choice = started[i][2]
            scores = by_run.get(i) or _scored(outcome)
            trials.append(_run_record(spec, seed, scores, outcome, fold, choice.chosen if choice else None))
        log.info("sweep of %d: %.0f s, %d tokens", len(runs), result.seconds, result.train_tokens)
        return trials

    first = [(spec, job.seeds[0]) for spec in job.candidates]
    names = [f"candidate{i}" for i in range(len(job.candidates))]
    candidates = _cross_validated(
        [sweep(first, [f"fold{f}-{n}" if f else n for n in names], fold) for f, fold in enumerate(folds)]
    )
    chosen = _best(candidates, task)
    spec = job.candidates[chosen]
    again = (
        sweep([(spec, seed) for seed in job.seeds[1:]], [f"seed{seed}" for seed in job.seeds[1:]], task)
        if len(job.seeds) > 1
        else []
    )
    model = SoftPromptModel.with_new_prompt(base, start(spec)[0])
    prompt = model.require_prompt()
    trainable = sum(p.numel() for p in prompt.parameters())
    frozen = prompt.frozen()
    stored = frozen.weights.numel() + (0 if frozen.below is None else frozen.below.numel())
    return Found(
        candidates=tuple(candidates),
        chosen=chosen,
        runs=(candidates[chosen], *again),
        trainable_params=trainable,
        stored_params=stored,
        base_params=_params(base),
        transfer=tuple(from_json(Transfer, choice.record()) for choice in transfers.values()) or None,
    )


def _weights(job: SearchJob, folds: list[Task], directory: Path) -> Found:
    """LoRA, full fine-tuning: each run on a freshly loaded base (PEFT wraps it in place), in the same loop."""
    task = folds[0]
    trainable = total = 0  # parameters: what the method trains (and stores), the whole model's

    def run(spec: MethodSpec, seed: int, output: Path, fold: Task = task) -> Trial:
        nonlocal trainable, total
        base = _load(fold.setup)
        total = _params(base)
        try:
            model = weights_model(spec, base, seed)
            config = _train_config(job, fold.setup, spec, seed, output)
            examples, validation = fold.examples(fold.train, base), fold.examples(fold.validation, base)
            result = train(
                model,
                examples,
                validation,
                config,
                run_info=run_info(fold.setup, fold.preset),
                measure=_validation_measure(fold),
            )
            base.model.requires_grad_(False)
            scores = _scored(result) or fold.validate(writer_of(model))[0]
        except Exception as exc:  # noqa: BLE001 - one candidate's failure is a result, not the end of the search
            log.warning("%s (%s) failed: %s", spec.method, spec.settings, exc)
            return Trial(spec=spec, seed=seed, settings=spec.settings, error=f"{type(exc).__name__}: {exc}")
        trainable = int(result.metrics["trainable_params"])
        del base, model
        gc.collect()
        return _run_record(spec, seed, scores, result, fold)

    first = job.seeds[0]
    by_fold = [
        [
            run(spec, first, directory / f"{f'fold{f}-' if f else ''}candidate{i}", fold)
            for i, spec in enumerate(job.candidates)
        ]
        for f, fold in enumerate(folds)
    ]
    candidates = _cross_validated(by_fold)
    chosen = _best(candidates, task)
    if job.kind is Kind.FULL:  # 0.5 GB a model: keep only the chosen one (and no other fold's)
        for record in [r for f, fold in enumerate(by_fold) for i, r in enumerate(fold) if f or i != chosen]:
            if record.artifact:
                shutil.rmtree(record.artifact, ignore_errors=True)
    spec = job.candidates[chosen]
    again = [run(spec, seed, directory / f"seed{seed}") for seed in job.seeds[1:]]
    return Found(
        candidates=tuple(candidates),
        chosen=chosen,
        runs=(candidates[chosen], *again),
        trainable_params=trainable,
        stored_params=trainable,
        base_params=total,
    )


def _cross_validated(by_fold: list[list[Trial]]) -> list[Trial]:
    """Each candidate's first-fold trial with its validation scores averaged over the folds (one fold: as it is).

    The trial stays the first fold's run (its artifact, steps, curve: what the chosen candidate's first seed
    keeps); ``folds`` lists every fold's scores, the run's own first."""
    if len(by_fold) == 1:
        return by_fold[0]
    out = []
    for i, trial in enumerate(by_fold[0]):
        runs = [fold[i] for fold in by_fold]
        failed = next((r.error for r in runs if r.error is not None), None)
        if failed is not None:
            out.append(replace(trial, error=failed))
            continue
        keys = [k for k in trial.validation if all(k in r.validation for r in runs)]
        mean = {k: statistics.fmean(r.validation[k] for r in runs) for k in keys}
        folds = tuple({k: r.validation[k] for k in keys} for r in runs)
        out.append(replace(trial, validation={**trial.validation, **mean}, folds=folds))
    return out


def _best(trials: list[Trial], task: Task) -> int:
    """The best finished candidate (see :func:`softprompt.measuring.selection.best`); failed ones never win."""
    finished = [i for i, t in enumerate(trials) if not t.failed]
    return finished[best([task.rank(trials[i].validation) for i in finished])]


def _load(setup: Any) -> FrozenModel:
    return setup.load()


def _params(base: FrozenModel) -> int:
    return sum(p.numel() for p in base.model.parameters())
