"""Run one phase of one method: its selection on validation rows, or the scoring of its chosen runs on test rows.

``python -m softprompt.measuring.methods.run JOB.json RESULT.json`` does the same in a fresh process,
which is how compare measures each method's peak RSS on its own (ru_maxrss is per process). The
``search`` phase reads only the training file; only the ``test`` phase reads the test file.
"""

from __future__ import annotations

import json
import logging
import resource
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

from softprompt.core import run_files
from softprompt.core.card import SCORES, write_model_card
from softprompt.core.data import Row
from softprompt.core.errors import ConfigError
from softprompt.core.files import write_json
from softprompt.core.frozen import FrozenModel
from softprompt.core.loading import check_dtype_name, load_base_model, resolve_dtype
from softprompt.measuring.classify import classify_rows
from softprompt.measuring.generation import Writer, items, reference_nll, row_stats
from softprompt.measuring.generation import scores as text_scores
from softprompt.measuring.methods import PROMPTS, Kind
from softprompt.measuring.methods.build import saved_writer
from softprompt.measuring.methods.search import job_from_json, run_info, search
from softprompt.measuring.presets import AnyPreset, Preset, TextPreset, load_preset, load_test_rows
from softprompt.measuring.records import (
    TO_TEST,
    LabelTest,
    LabelTested,
    Phase,
    TestCosts,
    TextTest,
    TextTested,
    ToTest,
    Trial,
    to_json,
)

log = logging.getLogger(__name__)

# What a user ships of each method: adapter or model weights and their config (not the trainer's
# checkpoint, metrics or plots, which the adapter directory also holds).
SHIPPED = ("adapter_config.json", "adapter_model.safetensors", "config.json", "model.safetensors", "prompt.txt")
M = TypeVar("M", LabelTest, TextTest)


@dataclass(frozen=True)
class RunSetup:
    model: str = field(metadata={"help": "base model reference"})
    preset: str = field(metadata={"help": "task preset name or JSON file"})
    data: str = field(metadata={"help": "directory with the preset's data files"})
    output: str = field(metadata={"help": "directory for adapters and results"})
    budget: int = field(
        default=0,
        metadata={
            "help": "optimizer steps per trained candidate (0: the time budget "
            "--max-seconds alone decides, steps unbounded inside it)"
        },
    )
    batch_size: int = field(default=8, metadata={"help": "training rows per step"})
    max_seconds: float = field(
        default=120.0,
        metadata={"help": "training seconds per candidate: every method gets the same time of this machine (0: none)"},
    )
    train_rows: int | None = field(default=None, metadata={"help": "use the first N training rows"})
    test_rows: int | None = field(default=None, metadata={"help": "evaluate on the first N test rows"})
    eval_batch_size: int = field(default=16, metadata={"help": "rows per scoring batch"})
    max_length: int = field(default=128, metadata={"help": "truncate training examples to this many tokens"})
    seed: int = field(
        default=0, metadata={"help": "first seed (inits, shuffling, in-context examples); seeds count up"}
    )
    keep_full_model: bool = field(default=False, metadata={"help": "keep the fully fine-tuned models on disk"})
    device: str | None = field(default=None, metadata={"help": "cpu, cuda, ..."})
    model_dtype: str = field(
        default="float32", metadata={"help": "the frozen base model's dtype: float32, bfloat16, float16 or auto"}
    )

    def __post_init__(self) -> None:
        if not self.preset or not self.data:
            raise ConfigError("compare needs --preset and --data (the directory holding the preset's files)")
        if self.budget < 0 or self.batch_size < 1 or self.eval_batch_size < 1:
            raise ConfigError("budget must be >= 0, batch_size and eval_batch_size >= 1")
        if not (self.budget or self.max_seconds > 0):
            raise ConfigError("give every candidate a budget: --max-seconds, or --budget in steps")
        check_dtype_name(self.model_dtype)

    def load(self) -> FrozenModel:
        """The base model every phase uses, on the setup's device and in its dtype."""
        return load_base_model(self.model, device=self.device, dtype=resolve_dtype(self.model_dtype, self.device))


def run_phase(job: dict[str, Any]) -> Phase:
    """``job``: {"phase": "search" | "test", "setup": RunSetup fields, ...}, as JSON (how it reaches a child
    process, and what tells a finished phase's result it may be reused)."""
    setup = RunSetup(**job["setup"])
    if job["phase"] == "search":
        return search(job_from_json(job["job"]), setup)
    if job["phase"] == "test":
        return score_test(TO_TEST.validate_python(job["selection"]), setup, job.get("test_rows"))
    raise ConfigError(f"unknown phase {job['phase']!r}")


def score_test(chosen: ToTest, setup: RunSetup, limit: int | None) -> LabelTested | TextTested:
    """Score every finished run of a method's selection on the test rows (the first ``limit``); few-shot's
    other draws too, returned apart (``draw_runs``) so that they never enter the method's score."""
    preset = load_preset(setup.preset)
    rows = load_test_rows(preset, setup.data, limit)
    if isinstance(preset, Preset):

        def labels(writer: Writer, seeds: list[int]) -> list[LabelTest]:
            return _label_members(writer, preset, rows, setup, seeds)

        runs, draws, costs = _scored(chosen, setup, preset, len(rows), labels)
        return LabelTested(runs=runs, draw_runs=draws, costs=costs)

    def text(writer: Writer, seeds: list[int]) -> list[TextTest]:
        return _text_members(writer, preset, rows, setup, seeds)

    found, found_draws, costs = _scored(chosen, setup, preset, len(rows), text)
    return TextTested(runs=found, draw_runs=found_draws, costs=costs)


def _scored(
    chosen: ToTest, setup: RunSetup, preset: AnyPreset, rows: int, members: Callable[[Writer, list[int]], list[M]]
) -> tuple[tuple[M, ...], tuple[M, ...] | None, TestCosts]:
    """Every finished run's (and every other draw's) scores from ``members``, a member per run; what it cost."""
    kind = chosen.kind
    runs: list[Trial] = [trial for trial in chosen.runs if not trial.failed]
    if not runs:
        raise ConfigError(f"{kind.value}: no run finished, nothing to test")
    trials = [*runs, *(chosen.draws or ())]
    started = time.perf_counter()
    # Soft prompts: every seed's prompt in one batched pass, a member each. PEFT injects LoRA into
    # a base in place, so each LoRA run gets its own; prompt engineering shares one.
    groups = [trials] if kind in PROMPTS else [[t] for t in trials]
    shared = None if kind in (Kind.LORA, Kind.FULL) else setup.load()
    found: list[M] = []
    for group in groups:
        writer = saved_writer(kind, shared or setup.load(), [t.directory for t in group])
        found += members(writer, [t.seed for t in group])
    seconds = time.perf_counter() - started
    first = trials[0].directory
    costs = TestCosts(
        eval_rows=rows,
        test_seconds=seconds,
        ms_per_example=1000 * seconds / max(rows * len(trials), 1),
        adapter_bytes=sum((first / name).stat().st_size for name in SHIPPED if (first / name).is_file()),
    )
    if kind is Kind.FULL and not setup.keep_full_model:
        for trial in trials:
            shutil.rmtree(trial.directory, ignore_errors=True)
    if kind in PROMPTS:
        for trial, member in zip(trials, found, strict=True):
            _card_with_scores(trial.directory, member.metric_values(), setup, preset)
    others = tuple(found[len(runs) :]) if chosen.draws is not None else None
    return tuple(found[: len(runs)]), others, costs


def _label_members(
    writer: Writer, preset: Preset, rows: list[Row], setup: RunSetup, seeds: list[int]
) -> list[LabelTest]:
    """Per member (a seed's run): rank classification's accuracy, macro-F1 and every row's label scores."""
    found = classify_rows(writer.scorer(), writer.base, preset, rows, setup.eval_batch_size, "test row")
    return [
        LabelTest(
            seed=seed,
            accuracy=m["accuracy"],
            macro_f1=m["macro_f1"],
            scores=tuple(tuple(row) for row in s.tolist()),
        )
        for seed, m, s in zip(seeds, found.member_metrics(), found.scores, strict=True)
    ]


def _text_members(
    writer: Writer, preset: TextPreset, rows: list[Row], setup: RunSetup, seeds: list[int]
) -> list[TextTest]:
    """Per member (a seed's run): a text task's reference negative log-likelihoods, greedy outputs (the preset's
    showcase inputs' too) and their metrics."""
    inputs = items(preset, rows, "test row")
    nll = reference_nll(writer, preset, inputs, setup.max_length, setup.eval_batch_size)
    written = writer.write([item.text for item in inputs] + list(preset.showcase), preset)
    refs = [item.references for item in inputs]
    out = []
    for seed, member_nll, outputs in zip(seeds, nll, written, strict=True):
        out.append(
            TextTest(
                seed=seed,
                metrics=text_scores({"nll": member_nll, **row_stats(outputs[: len(inputs)], refs)}),
                nll=tuple((float(total), float(tokens)) for total, tokens in member_nll),
                outputs=tuple(outputs[: len(inputs)]),
                showcase=tuple(outputs[len(inputs) :]),
            )
        )
    return out


def _card_with_scores(directory: Path, scores: dict[str, float], setup: RunSetup, preset: AnyPreset) -> None:
    """A compared prompt's model card, rewritten with its test scores once they are known."""
    if not (directory / run_files.METRICS).is_file():
        return  # an adapter reused from elsewhere: nothing recorded to write a card from
    found = json.loads((directory / run_files.METRICS).read_text(encoding="utf-8"))
    log_file = directory / run_files.RECORDS
    lines = log_file.read_text(encoding="utf-8").splitlines() if log_file.is_file() else []
    records = [json.loads(line) for line in lines if line.strip()]
    measured = {**found, **{k: v for k, v in scores.items() if k in SCORES}}
    write_model_card(directory, measured, records, run_info(setup, preset), device=setup.device or "cpu")


def main(argv: list[str]) -> int:
    job, out = json.loads(Path(argv[0]).read_text(encoding="utf-8")), Path(argv[1])
    logging.basicConfig(level=logging.WARNING)
    started = time.perf_counter()
    result = run_phase(job)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    write_json(out, to_json(replace(result, process_seconds=time.perf_counter() - started, peak_rss_mb=peak)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
