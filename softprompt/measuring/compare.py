"""``softprompt compare``: every adaptation method on one task, each tuned on validation only, then tested once.

The protocol, in order:

1. A validation split is carved out of the training file (deterministic, stratified by label:
   :func:`softprompt.measuring.selection.split_validation`); where it would hold fewer than
   ``--cv-below`` rows, trained methods choose by k-fold cross-validation instead
   (:func:`~softprompt.measuring.selection.k_folds`). The test file is not opened.
2. Each method chooses its settings on it (:mod:`softprompt.measuring.methods.search`): every
   trained method tries the same number of candidates (``--search-budget``), each with the same
   budget (training seconds of this machine, or steps) and early stopping on validation loss, and
   the best by validation accuracy is trained again with every seed; a ``--library`` adds
   transfer (a start from the best-scoring library prompt) to every soft-prompt method's inits; prompt engineering chooses instruction, shots, example draw (one
   per seed) and example order, and the context it chooses is its one run, the artifact a user
   would deploy. Every choice is written to ``OUTPUT/selection.json``.
3. Only then is the test file read, and every method's runs score it once. The report gives each
   method's chosen settings, validation score, test accuracy as mean +- standard deviation over
   seeds (prompt engineering: the chosen context's), and a 95% bootstrap interval
   (:mod:`softprompt.measuring.stats`). Few-shot's other draws of the chosen setting are tested
   too and reported beside it, as the spread over draws, never averaged into its number.

Each method's selection and test scoring run in their own processes (``methods/run.py``), so
peak RSS is per method and one failure does not end the comparison. Finished phases are kept in
``OUTPUT/results/`` and reused when the same job runs again, so an interrupted comparison resumes.
"""

from __future__ import annotations

import gc
import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

import torch
from pydantic import TypeAdapter, ValidationError

from softprompt.core import run_files
from softprompt.core.config_types import check_types
from softprompt.core.errors import ConfigError
from softprompt.core.files import write_json
from softprompt.core.forms import Form
from softprompt.core.library import check_base, read_library, refuse_own_data
from softprompt.core.prompt import Init
from softprompt.measuring.classify import VOTES
from softprompt.measuring.methods import PROMPTS, TRAINED, Kind, MethodSpec
from softprompt.measuring.methods.run import RunSetup, run_phase
from softprompt.measuring.methods.search import SearchJob, job_to_json
from softprompt.measuring.presets import AnyPreset, TextPreset, load_preset, load_test_rows, load_train_rows
from softprompt.measuring.records import (
    LABEL_TESTED,
    SELECTION,
    TEXT_TESTED,
    Choices,
    Failed,
    LabelTested,
    MethodChoice,
    Outcome,
    Phase,
    Selection,
    SplitSizes,
    TextTested,
    ToTest,
    to_json,
)
from softprompt.measuring.report_records import AnyReport, TextReport
from softprompt.measuring.selection import Split, design, k_folds, split_groups, split_validation
from softprompt.training.train import SCHEDULERS

log = logging.getLogger(__name__)

INITS = tuple(i.value for i in Init if i not in (Init.PEFT_RANDOM, Init.FILE))  # what a search can try
DEFAULT_METHODS = (Kind.ZERO_SHOT, Kind.FEW_SHOT, Kind.PROMPT_TUNING, Kind.PREFIX_TUNING, Kind.LATE_PROMPT, Kind.LORA)
P = TypeVar("P", bound=Phase)
T = TypeVar("T", LabelTested, TextTested)


def _help(text: str) -> dict[str, str]:
    return {"help": text}


@dataclass(frozen=True)
class CompareConfig:
    methods: tuple[str, ...] = field(
        default=tuple(k.value for k in DEFAULT_METHODS),
        metadata=_help("methods to run: " + ", ".join(k.value for k in Kind)),
    )
    seeds: int = field(
        default=3,
        metadata=_help(
            "seeds per method (mean, standard deviation, interval over them); few-shot: example draws, "
            "validation chooses one context and the others show the spread"
        ),
    )
    search_budget: int = field(default=6, metadata=_help("candidates every trained method tries on validation"))
    val_fraction: float = field(default=0.2, metadata=_help("share of the training rows that validate every choice"))
    val_max_rows: int = field(default=300, metadata=_help("at most this many validation rows"))
    split_seed: int = field(default=0, metadata=_help("seed of the validation split and of the candidate design"))
    cv_below: int = field(
        default=50,
        metadata=_help(
            "when the validation split would hold fewer rows, trained methods choose by k-fold cross-validation "
            "of the training rows, k = --cv-folds (label tasks; 0: never)"
        ),
    )
    cv_folds: int = field(default=3, metadata=_help("folds of that cross-validation"))
    eval_every: int = field(default=25, metadata=_help("steps between validation scores, under a step --budget"))
    eval_every_seconds: float = field(
        default=30.0, metadata=_help("training seconds between validation scores, under a time budget (--budget 0)")
    )
    patience: int = field(default=4, metadata=_help("stop after N validation scores without improvement"))
    schedules: tuple[str, ...] = field(default=("linear", "constant"), metadata=_help("learning-rate schedules to try"))
    pt_lrs: tuple[float, ...] = field(default=(0.3, 0.1, 0.03, 0.01), metadata=_help("prompt tuning: learning rates"))
    pt_lengths: tuple[int, ...] = field(default=(20,), metadata=_help("prompt, P-tuning and prefix lengths to try"))
    pt_inits: tuple[str, ...] = field(default=("labels", "text"), metadata=_help("prompt-tuning inits to try"))
    pt_reparam: tuple[int, ...] = field(
        default=(0, 128), metadata=_help("prompt tuning: residual MLP widths to try (0: none)")
    )
    lora_lrs: tuple[float, ...] = field(default=(1e-4, 3e-4, 1e-3, 3e-3), metadata=_help("LoRA: learning rates"))
    lora_ranks: tuple[int, ...] = field(default=(4, 8, 16), metadata=_help("LoRA: ranks to try"))
    prefix_lrs: tuple[float, ...] = field(default=(1e-3, 3e-3, 1e-2, 3e-2), metadata=_help("prefix tuning: lrs"))
    prefix_inits: tuple[str, ...] = field(
        default=("text", "labels"), metadata=_help("prefix tuning, late prompts: inits to try")
    )
    late_lrs: tuple[float, ...] = field(default=(0.1, 0.03, 0.01, 0.003), metadata=_help("late prompts: lrs"))
    late_depths: tuple[float, ...] = field(
        default=(0.5, 0.67), metadata=_help("late prompts: entry layers to try, as fractions of the depth")
    )
    late_forms: tuple[str, ...] = field(
        default=("kv",),
        metadata=_help(
            "late prompts: kv, vectors or both. Vectors enter where the model's states are large (SmolLM2's rms is "
            "0.11 at the input, 318 at layer 15), so they want learning rates far above late_lrs (docs/results.md)"
        ),
    )
    full_lrs: tuple[float, ...] = field(default=(1e-5, 3e-5, 1e-4), metadata=_help("full fine-tuning: lrs"))
    library: str | None = field(
        default=None,
        metadata=_help(
            "prompt library (a directory of adapters for this base model, e.g. other tasks' compare outputs): every "
            "soft-prompt method also tries starting from its best-scoring fitting prompt (init library); adapters "
            "trained on this task's own data are refused"
        ),
    )
    pe_shots: tuple[int, ...] = field(default=(1, 2), metadata=_help("few-shot: examples per class to try"))
    pe_orders: int = field(default=2, metadata=_help("few-shot: seeded example orders to try"))
    slow_test_rows: int | None = field(
        default=None, metadata=_help("score few-shot and full fine-tuning on only the first N test rows")
    )
    vote: str = field(default="mean", metadata=_help("ensemble vote over the seeds' prompts: mean or majority"))
    isolate: bool = field(default=True, metadata=_help("run each method in its own process (measures peak RSS)"))
    joint: bool = field(
        default=True,
        metadata=_help(
            "train a soft-prompt method's candidates together, in shared passes, each charged its share; "
            "--no-joint trains each alone (faster where a joint pass costs more than the separate ones: "
            "docs/results.md, run 6)"
        ),
    )

    def __post_init__(self) -> None:
        check_types(self)  # lists become tuples, ints floats where floats are asked; anything else is refused
        object.__setattr__(self, "methods", tuple(Kind(m).value for m in self.methods))
        for name in (
            "pt_lrs",
            "lora_lrs",
            "prefix_lrs",
            "full_lrs",
            "late_lrs",
            "late_depths",
            "pt_lengths",
            "pt_reparam",
            "lora_ranks",
            "pe_shots",
            "schedules",
            "pt_inits",
            "prefix_inits",
            "late_forms",
        ):
            if not getattr(self, name):
                raise ConfigError(f"{name} needs at least one value")
        for name in ("pt_lrs", "lora_lrs", "prefix_lrs", "full_lrs", "late_lrs"):
            if not all(v > 0 for v in getattr(self, name)):
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)}")
        for init in (*self.pt_inits, *self.prefix_inits):
            if init not in INITS:
                raise ConfigError(f"unknown init {init!r}: use {', '.join(INITS)}")
            if init == Init.LIBRARY.value and not self.library:
                raise ConfigError("init library needs --library DIR (a directory of earlier prompts)")
        if not self.late_forms or any(form not in {f.value for f in Form} for form in self.late_forms):
            raise ConfigError(f"late_forms must be vectors and/or kv, got {self.late_forms}")
        if any(not 0 < depth < 1 for depth in self.late_depths):
            raise ConfigError(f"late_depths are fractions of the depth, in (0, 1), got {self.late_depths}")
        if not self.eval_every_seconds > 0:
            raise ConfigError(f"eval_every_seconds must be positive, got {self.eval_every_seconds}")
        for schedule in self.schedules:
            if schedule not in SCHEDULERS:
                raise ConfigError(f"unknown schedule {schedule!r}: use {', '.join(SCHEDULERS)}")
        if self.cv_below < 0 or self.cv_folds < 2:
            raise ConfigError(f"cv_below must be >= 0 and cv_folds >= 2, got {self.cv_below} and {self.cv_folds}")
        if min(self.seeds, self.search_budget, self.pe_orders, self.patience, self.eval_every, self.val_max_rows) < 1:
            raise ConfigError("seeds, search_budget, pe_orders, patience, eval_every and val_max_rows must be >= 1")
        if not 0 < self.val_fraction < 1:
            raise ConfigError(f"val_fraction must be between 0 and 1, got {self.val_fraction}")
        if min(*self.pt_lengths, *self.pe_shots, *self.lora_ranks) < 1 or min(self.pt_reparam) < 0:
            raise ConfigError("lengths, shots and ranks must be >= 1 and MLP widths >= 0")
        if self.vote not in VOTES:
            raise ConfigError(f"vote must be {' or '.join(VOTES)}, got {self.vote!r}")


def method_candidates(kind: Kind, config: CompareConfig, labels: int) -> list[MethodSpec]:
    """Every setting a method's selection tries: a balanced design of at most ``search_budget`` for trained methods."""
    slow = config.slow_test_rows
    if kind is Kind.ZERO_SHOT:
        return [MethodSpec(kind, instruction=i) for i in (True, False)]
    if kind is Kind.FEW_SHOT:
        return [
            MethodSpec(kind, shots=k * labels, instruction=i, order=o, test_rows=slow)
            for i in (True, False)
            for k in config.pe_shots
            for o in range(config.pe_orders)
        ]
    space: dict[str, tuple[Any, ...]] = {"lr": _lrs(kind, config), "scheduler": config.schedules}
    if kind in PROMPTS:
        space["num_virtual_tokens"] = config.pt_lengths
    if kind in (Kind.PROMPT_TUNING, Kind.P_TUNING):
        space["init"] = _with_library(config.pt_inits, config)
    if kind in (Kind.PREFIX_TUNING, Kind.LATE_PROMPT):
        space["init"] = _with_library(config.prefix_inits, config)
    if kind is Kind.LATE_PROMPT:
        space["depth"], space["form"] = config.late_depths, config.late_forms
    if kind is Kind.PROMPT_TUNING:
        space["reparam_hidden"] = config.pt_reparam
    if kind is Kind.LORA:
        space["rank"] = config.lora_ranks
    test_rows = slow if kind is Kind.FULL else None
    return [
        MethodSpec(kind, test_rows=test_rows, **values)
        for values in design(space, config.search_budget, config.split_seed)
    ]


def _with_library(inits: tuple[str, ...], config: CompareConfig) -> tuple[str, ...]:
    """With a library, transfer is one more init every soft-prompt method tries."""
    return inits + (Init.LIBRARY.value,) if config.library and Init.LIBRARY.value not in inits else inits


def _lrs(kind: Kind, config: CompareConfig) -> tuple[float, ...]:
    return {
        Kind.PROMPT_TUNING: config.pt_lrs,
        Kind.P_TUNING: config.pt_lrs,
        Kind.PREFIX_TUNING: config.prefix_lrs,
        Kind.LATE_PROMPT: config.late_lrs,
        Kind.LORA: config.lora_lrs,
        Kind.FULL: config.full_lrs,
    }[kind]


def plan(setup: RunSetup, config: CompareConfig) -> tuple[AnyPreset, Split, list[SearchJob]]:
    """The validation split and every method's search, from the training file alone."""
    preset = load_preset(setup.preset)
    rows = load_train_rows(preset, setup.data, setup.train_rows)
    if isinstance(preset, TextPreset):
        column = preset.group_column
        groups = [str(row.get(column)) if column else str(i) for i, row in enumerate(rows)]
        split = split_groups(groups, config.val_fraction, config.val_max_rows, config.split_seed)
        config = _for_text(config)
        folds: list[Split] = []
    else:
        labels = [preset.label_index(row, f"training row {i + 1}") for i, row in enumerate(rows)]
        split = split_validation(labels, config.val_fraction, config.val_max_rows, config.split_seed)
        folds = k_folds(labels, config.cv_folds, config.split_seed) if len(split.validation) < config.cv_below else []
        split = folds[0] if folds else split
    other_folds = tuple((tuple(f.train), tuple(f.validation)) for f in folds[1:])
    seeds = tuple(setup.seed + i for i in range(config.seeds))
    jobs = []
    for kind in (Kind(m) for m in config.methods):
        stopping = (config.eval_every, config.patience) if kind in TRAINED else (0, 0)  # nothing trains
        candidates = tuple(method_candidates(kind, config, len(preset.labels)))
        every_seconds = config.eval_every_seconds if kind in TRAINED else 0.0
        joint = config.joint or kind not in PROMPTS
        library = config.library if kind in PROMPTS else None
        jobs.append(
            SearchJob(
                kind,
                candidates,
                seeds,
                tuple(split.train),
                tuple(split.validation),
                *stopping,
                every_seconds,
                joint,
                library,
                other_folds if kind in TRAINED else (),
            )
        )
    return preset, split, jobs


def _for_text(config: CompareConfig) -> CompareConfig:
    """A text task has no label words to start a prompt from: the label init gives way to the text init."""

    def inits(values: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(v for v in values if v != Init.LABELS.value) or (Init.TEXT.value,)

    return replace(config, pt_inits=inits(config.pt_inits), prefix_inits=inits(config.prefix_inits))


def compare(setup: RunSetup, config: CompareConfig) -> AnyReport:
    """Select every method on validation, write the choices, then score the test rows; returns the report."""
    from softprompt.measuring.generation import items
    from softprompt.measuring.report import write_report
    from softprompt.measuring.report_text import write_text_report
    from softprompt.measuring.summary import summarise, summarise_text

    output = Path(setup.output)
    check_library(config, setup)  # before anything is written or trained
    (output / "results").mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    preset, split, jobs = plan(setup, config)
    folds = next((job.folds for job in jobs if job.folds), ())  # cross-validation: the other folds
    write_json(
        output / run_files.SPLIT,
        {"train": split.train, "validation": split.validation, "other_folds": [list(held) for _, held in folds]},
    )
    selections = _select(jobs, setup, config, len(split.validation))
    # Every choice is made: written down before the test file is opened.
    sizes = SplitSizes(
        train_rows=len(split.train), validation_rows=len(split.validation), cv_folds=len(folds) + 1 if folds else None
    )
    chosen = tuple(_choice(job.kind, selection) for job, selection in zip(jobs, selections, strict=True))
    write_json(output / run_files.SELECTION, to_json(Choices(split=sizes, methods=chosen)))
    test_rows = load_test_rows(preset, setup.data, setup.test_rows)
    report: AnyReport
    if isinstance(preset, TextPreset):
        text = _test(jobs, selections, setup, config, TEXT_TESTED)
        report = summarise_text(preset, setup, config, split, text, items(preset, test_rows, "test row"))
        reused = _reused_seconds(text)
    else:
        gold = [preset.label_index(row, f"test row {i + 1}") for i, row in enumerate(test_rows)]
        labels = _test(jobs, selections, setup, config, LABEL_TESTED)
        report = summarise(preset, setup, config, split, labels, gold)
        reused = _reused_seconds(labels)
    report = replace(
        report,
        total_seconds=time.perf_counter() - started + reused,
        torch_threads=torch.get_num_threads(),
        cpu_count=os.cpu_count(),
    )
    if isinstance(report, TextReport):
        write_text_report(report, output)
    else:
        write_report(report, output)
    return report


def _select(jobs: list[SearchJob], setup: RunSetup, config: CompareConfig, validating: int) -> list[Selection | Failed]:
    """Every method's selection on the validation rows, each in its own phase."""
    selections = []
    for index, job in enumerate(jobs, start=1):
        log.info("[%d/%d] selecting %s on %d validation rows", index, len(jobs), job.kind.value, validating)
        selections.append(_run_one("search", {"job": _job_json(job)}, setup, config.isolate, job.kind, SELECTION))
    return selections


def _test(
    jobs: list[SearchJob],
    selections: list[Selection | Failed],
    setup: RunSetup,
    config: CompareConfig,
    read: TypeAdapter[T | Failed],
) -> list[Outcome[T]]:
    """Every chosen method's runs scored on the test rows, each method in its own phase."""
    outcomes: list[Outcome[T]] = []
    for job, selection in zip(jobs, selections, strict=True):
        if isinstance(selection, Failed):
            outcomes.append(Outcome(job.kind, selection))
            continue
        limit = min((n for n in (job.candidates[0].test_rows, setup.test_rows) if n), default=None)
        chosen = ToTest(kind=job.kind, runs=selection.found.runs, draws=selection.found.draws)
        payload = {"selection": to_json(chosen), "test_rows": limit}
        outcomes.append(Outcome(job.kind, selection, _run_one("test", payload, setup, config.isolate, job.kind, read)))
    return outcomes


def check_library(config: CompareConfig, setup: RunSetup) -> None:
    """A library a comparison may start prompts from: readable, of this base model, and holding nothing of this
    task (no prompt trained on its data files, no earlier run of this comparison's own output)."""
    if not config.library:
        return
    root, output = Path(config.library).resolve(), Path(setup.output).resolve()
    if root == output or root.is_relative_to(output) or output.is_relative_to(root):
        raise ConfigError(
            f"--library {config.library} and --output {setup.output} overlap: a comparison never starts from its own "
            "runs; keep the library outside the output directory"
        )
    library = read_library(root)
    refuse_own_data(library, setup.data, root)
    base = setup.load()
    try:
        check_base(library, base)
    finally:
        del base
        gc.collect()


def _job_json(job: SearchJob) -> dict[str, Any]:
    found = job_to_json(job)
    if job.joint:  # the default: a finished phase from before the option existed is the same job
        del found["joint"]
    if job.library is None:
        del found["library"]
    if not job.folds:
        del found["folds"]
    if job.kind is Kind.FEW_SHOT:  # a few-shot search from before draws were searched chose otherwise: not reused
        found["draws"] = "searched on validation"
    return dict(found)


def _choice(kind: Kind, selection: Selection | Failed) -> MethodChoice:
    """A method's entry in selection.json: its choice and the runs the test will score (listed as ListedTrial)."""
    if isinstance(selection, Failed):
        return MethodChoice(kind=kind, error=selection.error)
    found = selection.found
    return MethodChoice(
        kind=kind,
        method=selection.method,
        chosen=found.choice.settings,
        validation=found.choice.validation,
        runs=found.runs,
        # few-shot: the other draws of the chosen setting, tested beside the chosen context, never for its score
        draws=found.draws,
    )


def _reused_seconds(outcomes: Sequence[Outcome[Any]]) -> float:
    """Reused phases count with the time they took when they ran: a resumed comparison reports its whole cost."""
    phases = [phase for o in outcomes for phase in (o.selection, o.test) if phase is not None]
    return sum(phase.process_seconds for phase in phases if phase.reused)


# Options that only matter to trained methods (and where results go): a prompt-engineering result
# stays valid when they change, so comparisons at several budgets share it.
TRAINING_ONLY = ("budget", "batch_size", "max_seconds", "max_length", "keep_full_model")


def _run_one(
    phase: str, payload: dict[str, Any], setup: RunSetup, isolate: bool, kind: Kind, read: TypeAdapter[P | Failed]
) -> P | Failed:
    """Reuse a finished phase of the same job, else run it (in a child process if isolating); its result as
    ``read`` reads the JSON its file holds (``OUTPUT/results/KIND.PHASE.json``, with the job beside it)."""
    job = {"phase": phase, "setup": asdict(setup), **payload}
    path = Path(setup.output) / "results" / f"{kind.value}.{phase}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_file():
        cached = json.loads(path.read_text(encoding="utf-8"))
        if _same_job(cached.get("job"), job, kind) and "error" not in cached:
            try:
                reused = replace(read.validate_python(cached), reused=True)
            except ValidationError as exc:
                log.info("%s no longer reads (%d errors): running it again", path, exc.error_count())
            else:
                log.info("reusing %s", path)
                return reused
    path.unlink(missing_ok=True)  # a failed run must not leave an older result in its place
    if isolate:
        result = _run_child(job, path)
    else:
        started = time.perf_counter()
        result = to_json(replace(run_phase(job), process_seconds=time.perf_counter() - started))
    write_json(path, {**result, "job": job})
    found = read.validate_python(result)
    if isinstance(found, Failed):
        log.warning("%s %s failed: %s", kind.value, phase, found.error)
    return found


def _same_job(cached: Any, job: dict[str, Any], kind: Kind) -> bool:
    if not isinstance(cached, dict):
        return False
    cached, job = json.loads(json.dumps(cached)), json.loads(json.dumps(job))
    ignored = ("output", *TRAINING_ONLY) if kind not in TRAINED else ("output",)
    for key in ignored:
        cached.get("setup", {}).pop(key, None)
        job["setup"].pop(key, None)
    return bool(cached == job)


def _run_child(job: dict[str, Any], path: Path) -> dict[str, Any]:
    job_file = path.with_suffix(".job.json")
    write_json(job_file, job)
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[2])  # this checkout, not another install
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    command = [sys.executable, "-m", "softprompt.measuring.methods.run", str(job_file), str(path)]
    started = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    job_file.unlink(missing_ok=True)
    if done.returncode != 0 or not path.is_file():
        lines = [line for line in done.stderr.strip().splitlines() if line.strip()]
        return {
            "error": lines[-1] if lines else f"exit code {done.returncode}",
            "process_seconds": time.perf_counter() - started,
        }
    return dict(json.loads(path.read_text(encoding="utf-8")))
