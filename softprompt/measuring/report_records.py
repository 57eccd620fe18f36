"""The report's records: per method its choice, validation score, test score with its interval, seeds and costs.

:mod:`softprompt.measuring.summary` builds them from the phases' records (:mod:`softprompt.measuring.records`,
whose docstring gives their JSON shape: ``report.json`` is :func:`~softprompt.measuring.records.to_json` of a
:class:`LabelReport` or :class:`TextReport`); :mod:`softprompt.measuring.report` and
:mod:`softprompt.measuring.report_text` lay them out. A row is a :class:`LabelRow` or :class:`TextRow` when its
method was selected and tested, else a :class:`FailedRow` saying why.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from pydantic import Field, TypeAdapter

from softprompt.measuring.methods import Kind, MethodSpec
from softprompt.measuring.records import (
    Accuracy,
    Record,
    ReportedTrial,
    SeedAccuracy,
    TestCosts,
    Transfer,
    flat,
    is_validation,
    part,
)


@dataclass(frozen=True, kw_only=True)
class Selected(Record):
    """What a method's selection chose and cost, whatever the kind of task."""

    chosen: str  # the chosen candidate's settings
    chosen_spec: MethodSpec
    validation: dict[str, float] = flat(is_validation)  # the chosen candidate's scores
    val_seed_mean: dict[str, float] = field(default_factory=dict)  # the chosen setting's scores over its seeds
    candidates: tuple[ReportedTrial, ...] = ()
    seed_runs: tuple[ReportedTrial, ...] = ()
    trainable_params: int
    trainable_percent: float
    stored_params: int
    stored_percent: float
    base_params: int | None = None
    select_seconds: float = 0.0
    select_peak_rss_mb: float | None = None
    train_seconds: float = 0.0  # the chosen candidate's
    transfer: tuple[Transfer, ...] | None = None


@dataclass(frozen=True, kw_only=True)
class DrawScore(Record):
    """One example draw of few-shot's chosen setting: its validation and test scores on ``Draws.metric``."""

    seed: int
    chosen: bool  # the draw validation chose: the method's number
    settings: str | None = None
    validation: dict[str, float] = flat(is_validation)  # the draw's validation scores (val_<metric> among them)
    test: dict[str, float] = flat(lambda key: not is_validation(key))  # {<metric>: its test score}


@dataclass(frozen=True, kw_only=True)
class Draws(Record):
    """Few-shot's spread over example draws, beside its number (never averaged into it)."""

    metric: str
    runs: tuple[DrawScore, ...]
    mean: float
    std: float


@dataclass(frozen=True, kw_only=True)
class Result(Record):
    """A method's test result, whatever the kind of task."""

    costs: TestCosts = part()
    test_peak_rss_mb: float | None = None
    draws: Draws | None = None


@dataclass(frozen=True, kw_only=True)
class LabelResult(Result):
    """Test accuracy as mean +- standard deviation over seeds, its 95% bootstrap interval, macro-F1."""

    test_runs: tuple[SeedAccuracy, ...]
    accuracy: float
    accuracy_std: float
    accuracy_ci: tuple[float, float]
    macro_f1: float
    macro_f1_std: float


@dataclass(frozen=True, kw_only=True)
class Score(Record):
    """One metric over seeds: mean, standard deviation, 95% bootstrap interval over test inputs, each seed's."""

    mean: float
    std: float
    ci: tuple[float, float]
    runs: tuple[float, ...]


@dataclass(frozen=True, kw_only=True)
class TextResult(Result):
    scores: dict[str, Score]  # per metric: ce, bleu, chrf, rougeL
    ppl: float
    seeds: tuple[int, ...]
    outputs: tuple[str, ...]  # the first seed's, on the first test inputs
    showcase: tuple[str, ...] = ()


@dataclass(frozen=True, kw_only=True)
class MethodRow(Record):
    """One method's row of the report."""

    kind: Kind
    method: str
    selected: Selected | None = part("chosen")


@dataclass(frozen=True, kw_only=True)
class FailedRow(MethodRow):
    error: str  # "selection: ..." or "test: ..." (then ``selected`` says what was chosen)


@dataclass(frozen=True, kw_only=True)
class Done(MethodRow):
    """A method that was selected and tested."""

    selected: Selected = part()
    tested: Result = part()


@dataclass(frozen=True, kw_only=True)
class LabelRow(Done):
    tested: LabelResult = part()


@dataclass(frozen=True, kw_only=True)
class TextRow(Done):
    tested: TextResult = part()


@dataclass(frozen=True, kw_only=True)
class Goal(Record):
    goal: str
    value: float
    met: bool
    text: str
    interval: tuple[float, float] | None = None  # paired 95% bootstrap interval of value
    target: float | None = None
    rows: int | None = None


@dataclass(frozen=True, kw_only=True)
class Ensemble(Record):
    """A vote over prompt tuning's seed prompts on the test rows: one more number, chosen by nothing."""

    members: tuple[str, ...]
    vote: str  # the vote shown: mean or majority
    mean: Accuracy
    majority: Accuracy
    voted: Accuracy = part()


@dataclass(frozen=True, kw_only=True)
class SideBySide(Record):
    inputs: tuple[str, ...]
    references: tuple[tuple[str, ...], ...]
    showcase: tuple[str, ...] = ()


@dataclass(frozen=True, kw_only=True)
class Header(Record):
    """What every report starts with: the task, the model, every setting, the split's sizes (and folds)."""

    cv_folds: int = 0
    task: str
    model: str
    setup: dict[str, Any]  # the run's settings as given (RunSetup)
    compare: dict[str, Any]  # and the comparison's (CompareConfig)
    train_rows: int
    validation_rows: int


@dataclass(frozen=True, kw_only=True)
class Report(Record):
    """What compare returns and writes as ``report.json``."""

    kind: str
    header: Header = part()
    test_rows: int
    methods: tuple[MethodRow, ...]
    goals: tuple[Goal, ...] = ()
    total_seconds: float = 0.0
    torch_threads: int = 0
    cpu_count: int | None = None


@dataclass(frozen=True, kw_only=True)
class LabelReport(Report):
    kind: Literal["labels"] = "labels"
    majority_class_accuracy: float
    methods: tuple[LabelRow | FailedRow, ...]
    ensemble: Ensemble | None = None


@dataclass(frozen=True, kw_only=True)
class TextReport(Report):
    kind: Literal["text"] = "text"
    primary_metric: str
    references_per_input: float
    side_by_side: SideBySide
    methods: tuple[TextRow | FailedRow, ...]


AnyReport = LabelReport | TextReport
REPORT: TypeAdapter[AnyReport] = TypeAdapter(Annotated[AnyReport, Field(discriminator="kind")])  # report.json
