"""One method's selection, on validation rows only: try its candidates, keep the best, rerun it with more seeds.

Every trained method gets the same effort: the same number of candidates (the search budget), the
same step budget for each, the same early stopping (validation loss every ``eval_every`` steps,
``patience`` scores without improvement, the best weights kept). Candidates are tried with the
first seed; the one with the best validation accuracy (then label cross-entropy) is trained again
with every other seed, each run again stopped on validation. Prompt engineering chooses the same
way among instruction or not, numbers of shots and example orders; with the other seeds it draws
other examples and chooses their order on validation.

Prompt-tuning candidates train together, in shared passes (:func:`softprompt.training.sweep.train_sweep`),
and are scored together (one engine pass, a member per prompt). Only the training file is read here.
"""

from __future__ import annotations

import gc
import logging
import shutil
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch

from softprompt.core.base import BaseModel
from softprompt.core.data import DataConfig, Example, Row, tokenize_rows
from softprompt.core.model import SoftPromptModel
from softprompt.core.models import load_base_model
from softprompt.measuring.classify import Scorer, classify, metrics
from softprompt.measuring.methods import Kind, MethodSpec
from softprompt.measuring.methods.build import (
    build,
    context_for,
    fit_result,
    prompt_config,
    save_context,
    trainer_config,
)
from softprompt.measuring.methods.fit import FitConfig
from softprompt.measuring.presets import TARGET_COLUMN, Preset, load_preset, load_train_rows
from softprompt.measuring.selection import best
from softprompt.training.sweep import Candidate, train_sweep

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


@dataclass
class Task:
    """The job's rows, read from the training file alone, and the base model they are scored with."""

    preset: Preset
    train: list[Row]
    validation: list[Row]
    setup: Any  # RunSetup (run.py imports this module)

    @property
    def gold(self) -> list[int]:
        return [self.preset.label_index(r, f"validation row {i + 1}") for i, r in enumerate(self.validation)]

    def examples(self, rows: list[Row], base: BaseModel) -> list[Example]:
        data = data_config(self.setup, self.preset)
        return tokenize_rows(self.preset.with_target(rows, self.setup.data), data, base.tokenizer, self.setup.data)

    def validate(self, scorer: Scorer, base: BaseModel) -> list[dict[str, float]]:
        """Per scorer member: validation accuracy, macro-F1 and label cross-entropy (rank classification)."""
        texts = [self.preset.fill(row) for row in self.validation]
        with torch.inference_mode():
            result = classify(scorer, base.tokenizer, texts, self.preset.words, self.setup.eval_batch_size, base.device)
        gold = torch.tensor(self.gold)
        out = []
        for member in result.scores:  # [N, K]
            found = metrics(member.argmax(-1).tolist(), self.gold, len(self.preset.labels))
            label_loss = float(-member.log_softmax(-1)[torch.arange(len(gold)), gold].mean())
            out.append({"val_accuracy": found["accuracy"], "val_macro_f1": found["macro_f1"], "val_label_loss": label_loss})
        return out


def data_config(setup: Any, preset: Preset) -> DataConfig:
    """How compare reads a task's rows for training (what an adapter's card records as its data)."""
    return DataConfig(data=setup.data, template=preset.template, target_column=TARGET_COLUMN,
                      max_length=setup.max_length)  # fmt: skip


def run_info(setup: Any, preset: Preset) -> dict[str, Any]:
    """What a compare-trained adapter's model card says about its run."""
    return {"model": setup.model, "data": asdict(data_config(setup, preset))}


def search(job: SearchJob, setup: Any) -> dict[str, Any]:
    """Run one method's selection; a JSON-ready record of every candidate, the choice and every seed's run."""
    preset = load_preset(setup.preset)
    rows = load_train_rows(preset, setup.data, setup.train_rows)
    task = Task(preset, [rows[i] for i in job.train_index], [rows[i] for i in job.validation_index], setup)
    directory = Path(setup.output) / "runs" / job.kind.value
    started = time.perf_counter()
    if job.kind in (Kind.ZERO_SHOT, Kind.FEW_SHOT):
        found = _prompt_engineering(job, task, directory)
    elif job.kind in (Kind.PROMPT_TUNING, Kind.P_TUNING):
        found = _prompt_tuning(job, task, directory)
    else:
        found = _weights(job, task, directory)
    return {"kind": job.kind.value, "method": job.candidates[0].method, "train_rows": len(task.train),
            "validation_rows": len(task.validation), "select_seconds": time.perf_counter() - started, **found}  # fmt: skip


def _record(spec: MethodSpec, seed: int, scores: dict[str, float], **more: Any) -> dict[str, Any]:
    return {"spec": asdict(spec), "settings": spec.settings, "seed": seed, **scores, **more}


def _prompt_engineering(job: SearchJob, task: Task, directory: Path) -> dict[str, Any]:
    base = _load(task.setup)

    def tried(specs: Sequence[MethodSpec], seed: int) -> list[dict[str, Any]]:
        records = []
        for spec in specs:
            context = context_for(spec, task.preset, task.train, seed)
            (scores,) = task.validate(_engine(base, context), base)
            records.append(_record(spec, seed, scores, context=context, context_chars=len(context)))
        return records

    candidates = tried(job.candidates, job.seeds[0])
    chosen = _best(candidates)
    runs = [candidates[chosen]]
    spec = job.candidates[chosen]
    orders = sorted({c.order for c in job.candidates if replace(c, order=0) == replace(spec, order=0)})
    for seed in job.seeds[1:] if spec.kind is Kind.FEW_SHOT else ():  # zero-shot is one deterministic run
        variants = tried([replace(spec, order=order) for order in orders], seed)
        runs.append(variants[_best(variants)])
    for run in runs:
        run["artifact"] = str(save_context(directory / f"seed{run['seed']}", run["context"]))
    return {"candidates": candidates, "chosen": chosen, "runs": runs, "trainable_params": 0, "stored_params": 0,
            "base_params": _params(base)}  # fmt: skip


def _engine(base: BaseModel, context: str) -> Scorer:
    from softprompt.measuring.classify import engine_scorer

    return engine_scorer(base, [None], context)


def _fit_config(spec: MethodSpec, job: SearchJob, setup: Any, seed: int) -> FitConfig:
    return FitConfig(steps=setup.budget, lr=spec.lr, batch_size=setup.batch_size, seed=seed,
                     max_seconds=setup.max_seconds, scheduler=spec.scheduler, eval_every=job.eval_every,
                     patience=job.patience)  # fmt: skip


def _prompt_tuning(job: SearchJob, task: Task, directory: Path) -> dict[str, Any]:
    base = _load(task.setup)
    train_set, validation = task.examples(task.train, base), task.examples(task.validation, base)

    def sweep(runs: list[tuple[MethodSpec, int]], names: list[str]) -> list[dict[str, Any]]:
        models = [SoftPromptModel.with_new_prompt(base, prompt_config(s, task.preset), seed=seed) for s, seed in runs]
        configs = [trainer_config(_fit_config(s, job, task.setup, seed), directory / name, task.setup.eval_batch_size)
                   for (s, seed), name in zip(runs, names, strict=True)]  # fmt: skip
        info = run_info(task.setup, task.preset)
        result = train_sweep([Candidate(m, c, info) for m, c in zip(models, configs, strict=True)], train_set, validation)
        from softprompt.measuring.classify import engine_scorer

        trained = [i for i, r in enumerate(result.results) if not isinstance(r, Exception)]
        prompts = [models[i].require_prompt().frozen() for i in trained]
        by_run = dict(zip(trained, task.validate(engine_scorer(base, prompts), base) if prompts else [], strict=True))
        records = []
        for i, ((spec, seed), outcome) in enumerate(zip(runs, result.results, strict=True)):
            if isinstance(outcome, Exception):
                records.append(_record(spec, seed, {}, error=str(outcome)))
                continue
            fitted = fit_result(outcome.records)
            records.append(_record(spec, seed, by_run[i], artifact=str(outcome.output), steps=fitted.steps,
                                   best_step=fitted.best_step, train_seconds=fitted.seconds,
                                   curve=fitted.curve, stopped_early=bool(outcome.metrics["stopped_early"])))  # fmt: skip
        log.info("sweep of %d: %.0f s, %d tokens", len(runs), result.seconds, result.train_tokens)
        return records

    candidates = sweep([(spec, job.seeds[0]) for spec in job.candidates], [f"candidate{i}" for i in range(len(job.candidates))])
    chosen = _best(candidates)
    spec = job.candidates[chosen]
    again = sweep([(spec, seed) for seed in job.seeds[1:]], [f"seed{seed}" for seed in job.seeds[1:]]) if len(job.seeds) > 1 else []
    model = SoftPromptModel.with_new_prompt(base, prompt_config(spec, task.preset))
    trainable = sum(p.numel() for p in model.require_prompt().parameters())
    return {"candidates": candidates, "chosen": chosen, "runs": [candidates[chosen], *again],
            "trainable_params": trainable, "stored_params": spec.num_virtual_tokens * base.hidden_size,
            "base_params": _params(base)}  # fmt: skip


def _weights(job: SearchJob, task: Task, directory: Path) -> dict[str, Any]:
    """Prefix tuning, LoRA, full fine-tuning: each run on a freshly loaded base (PEFT wraps it in place)."""
    facts: dict[str, int] = {}

    def run(spec: MethodSpec, seed: int, output: Path) -> dict[str, Any]:
        base = _load(task.setup)
        total = _params(base)
        try:
            tuned = build(spec, base, task.preset, task.train, seed)
            assert tuned.fit is not None
            fitted = tuned.fit(task.examples(task.train, base), _fit_config(spec, job, task.setup, seed), output,
                               task.examples(task.validation, base))  # fmt: skip
            base.model.requires_grad_(False)
            (scores,) = task.validate(tuned.scorer(), base)
            tuned.save(output)
        except Exception as exc:  # noqa: BLE001 - one candidate's failure is a result, not the end of the search
            log.warning("%s (%s) failed: %s", spec.method, spec.settings, exc)
            return _record(spec, seed, {}, error=f"{type(exc).__name__}: {exc}")
        facts.update(trainable_params=tuned.trainable, base_params=total)
        facts["stored_params"] = tuned.stored_params if tuned.stored_params is not None else tuned.trainable
        del base, tuned
        gc.collect()
        return _record(spec, seed, scores, artifact=str(output), steps=fitted.steps, best_step=fitted.best_step,
                       train_seconds=fitted.seconds, curve=fitted.curve, stopped_early=fitted.stopped_early)  # fmt: skip

    first = job.seeds[0]
    candidates = [run(spec, first, directory / f"candidate{i}") for i, spec in enumerate(job.candidates)]
    chosen = _best(candidates)
    if job.kind is Kind.FULL:  # 0.5 GB a model: keep only the chosen one
        for i, record in enumerate(candidates):
            if i != chosen and record.get("artifact"):
                shutil.rmtree(record["artifact"], ignore_errors=True)
    spec = job.candidates[chosen]
    again = [run(spec, seed, directory / f"seed{seed}") for seed in job.seeds[1:]]
    return {"candidates": candidates, "chosen": chosen, "runs": [candidates[chosen], *again], **facts}


def _best(records: list[dict[str, Any]]) -> int:
    """The best finished candidate (see :func:`softprompt.measuring.selection.best`); failed ones never win."""
    finished = [i for i, r in enumerate(records) if "error" not in r]
    scores = [(records[i]["val_accuracy"], records[i]["val_label_loss"]) for i in finished]
    return finished[best(scores)]


def _load(setup: Any) -> BaseModel:
    return load_base_model(setup.model, device=setup.device)


def _params(base: BaseModel) -> int:
    return sum(p.numel() for p in base.model.parameters())
