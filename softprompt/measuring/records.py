"""Typed records of a comparison's phases, and the one JSON shape of every record compare writes.

::

    Trial ─► Found ─► Selection      methods/search.py: every candidate, the choice, every seed's run
                        │  MethodChoice, in selection.json: what validation chose, before any test row is read
                        │  ToTest: the runs the test phase scores
                        ▼
    LabelTest / TextTest ─► LabelTested / TextTested      methods/run.py: every run scored on the test rows
                        ▼
    Outcome (a method's two phases) ─► summary.py ─► the report's records (report_records.py)

Every record crosses processes and files as JSON through pydantic (:func:`to_json`, and a ``TypeAdapter``
for each file read back), in the shape the files have always had, so earlier run directories still read:

- a field that is ``None`` is absent from its record's JSON object;
- a :func:`flat` field (validation scores, ``val_accuracy``, ...) is a dict written as its record's own keys;
- a :func:`part` field is a record whose keys sit beside its parent's (a report row's choice and test result);
- where a field is declared as a base class (``ListedTrial``, ``ReportedTrial``, ``SeedAccuracy``), a subclass
  instance is written as that base: selection.json and the report show less of a trial than search keeps.

Keys a reader does not know are ignored, so a newer file reads with an older reader.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Annotated, Any, Generic, NamedTuple, TypeVar

from pydantic import Field, SerializerFunctionWrapHandler, TypeAdapter, model_serializer, model_validator

from softprompt.core.errors import ConfigError
from softprompt.measuring.generation import METRICS
from softprompt.measuring.methods import Kind, MethodSpec

T = TypeVar("T")
VALIDATION = "val_"  # the prefix of every validation score: val_accuracy, val_label_loss, val_bleu, val_ce, ...


def flat(belongs: Callable[[str], bool]) -> Any:
    """A ``dict[str, float]`` field written as its record's own keys: read back from every numeric key that
    ``belongs`` and is not one of the record's fields."""
    return field(default_factory=dict, metadata={"flat": belongs})


def part(marker: str | None = None) -> Any:
    """A record field whose keys sit beside its parent's; read back from the parent's object (when it holds
    ``marker``: else the part is None). Without ``marker`` the part is required."""
    if marker is None:
        return field(metadata={"part": None})
    return field(default=None, metadata={"part": marker})


def is_validation(key: str) -> bool:
    return key.startswith(VALIDATION)


@dataclass(frozen=True, kw_only=True)
class Record:
    """The base of every record here: its JSON shape (the module docstring), in one place."""

    @model_serializer(mode="wrap")
    def _write(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        found = dict(handler(self))
        for spread in fields(self):
            if "flat" in spread.metadata or "part" in spread.metadata:
                found.update(found.pop(spread.name, None) or {})
        return {key: value for key, value in found.items() if value is not None}

    @model_validator(mode="before")
    @classmethod
    def _read(cls, raw: Any) -> Any:
        if not isinstance(raw, dict):
            return raw
        own = {f.name for f in fields(cls)}
        found = dict(raw)
        for spread in fields(cls):
            if spread.name in raw:
                continue
            if "flat" in spread.metadata:
                belongs = spread.metadata["flat"]
                found[spread.name] = {
                    key: value
                    for key, value in raw.items()
                    if key not in own
                    and belongs(key)
                    and isinstance(value, int | float)
                    and not isinstance(value, bool)
                }
            elif "part" in spread.metadata:
                marker = spread.metadata["part"]
                found[spread.name] = raw if marker is None or marker in raw else None
        return found


def to_json(record: Record) -> dict[str, Any]:
    """A record as the JSON object its file holds."""
    return dict(TypeAdapter(type(record)).dump_python(record, mode="json"))


def from_json(kind: type[T], raw: Any) -> T:
    """A record of ``kind`` from its JSON object, checked on the way in."""
    return TypeAdapter(kind).validate_python(raw)


# ---------------------------------------------------------------------------------------------
# A trial: one setting of one method, trained (or built) with one seed and scored on validation


class Point(NamedTuple):
    """One validation of a training run: a curve's point (a list of four in JSON)."""

    step: int
    seconds: float  # training seconds so far
    loss: float  # validation loss
    score: float | None = None  # the score choices are made on (val_accuracy, val_bleu, ...), where measured


@dataclass(frozen=True, kw_only=True)
class ListedTrial(Record):
    """What selection.json lists of a trial: which run, where its artifact is, its validation scores."""

    seed: int | None = None
    settings: str | None = None
    artifact: str | None = None  # the run's directory: adapter, weights or prompt.txt
    error: str | None = None  # the trial failed: why
    validation: dict[str, float] = flat(is_validation)  # val_accuracy, val_macro_f1, val_label_loss | val_ce, ...


@dataclass(frozen=True, kw_only=True)
class ReportedTrial(ListedTrial):
    """What the report shows of a trial besides: the budget it spent and its validation curve."""

    steps: int | None = None
    best_step: int | None = None  # the step whose state it kept (early stopping)
    stopped_early: bool | None = None
    train_seconds: float | None = None
    curve: tuple[Point, ...] | None = None


@dataclass(frozen=True, kw_only=True)
class Trial(ReportedTrial):
    """Everything a search keeps of a trial (``OUTPUT/results/KIND.search.json``)."""

    spec: MethodSpec
    seed: int
    settings: str  # the spec's settings in words (few-shot: and the draw of examples)
    init_from: str | None = None  # init library: the library prompt it started from
    context: str | None = None  # prompt engineering: the text before every input
    context_chars: int | None = None
    folds: tuple[dict[str, float], ...] | None = None  # cross-validated: every fold's scores, the first fold's first

    @property
    def failed(self) -> bool:
        return self.error is not None

    @property
    def directory(self) -> Path:
        """Where a finished trial saved what it trained (or its context)."""
        if self.artifact is None:
            raise ConfigError(f"{self.spec.method} ({self.settings}), seed {self.seed}, saved nothing")
        return Path(self.artifact)


@dataclass(frozen=True, kw_only=True)
class Transfer(Record):
    """Which library prompt a soft-prompt method's init library candidates started from
    (:meth:`softprompt.core.library.Choice.record`)."""

    library: str
    chosen: str
    task: str | None = None
    chosen_scores: dict[str, Any] = field(default_factory=dict)  # the chosen prompt's: adapter, task, val_*
    scored: int
    skipped: int
    seconds: float
    scores: tuple[dict[str, Any], ...] = ()  # every fitting prompt's


# ---------------------------------------------------------------------------------------------
# The phases: a method's selection on validation, then its runs on the test rows


@dataclass(frozen=True, kw_only=True)
class Phase(Record):
    """What every phase's result records of its process (``OUTPUT/results/KIND.PHASE.json``)."""

    process_seconds: float = 0.0
    peak_rss_mb: float | None = None  # in its own process only
    reused: Annotated[bool, Field(exclude=True)] = False  # read from an earlier run of the same job, not run


@dataclass(frozen=True, kw_only=True)
class Failed(Phase):
    """A phase that ended in an error (in its child process, or before)."""

    error: str


@dataclass(frozen=True, kw_only=True)
class Found(Record):
    """What a method's search found: every candidate with the first seed, the choice, and the chosen
    setting's run with every seed (the first is the chosen candidate itself)."""

    candidates: tuple[Trial, ...]
    chosen: int  # index into candidates
    runs: tuple[Trial, ...]
    draws: tuple[Trial, ...] | None = None  # few-shot: the other draws of the chosen setting, tested apart
    trainable_params: int
    stored_params: int
    base_params: int
    transfer: tuple[Transfer, ...] | None = None  # init library: one choice per form, entry layer and length

    @property
    def choice(self) -> Trial:
        return self.candidates[self.chosen]


@dataclass(frozen=True, kw_only=True)
class Selection(Phase):
    """One method's selection on validation rows (the training file alone)."""

    kind: Kind
    method: str
    train_rows: int
    validation_rows: int
    cv_folds: int | None = None  # trained methods' choices by k-fold cross-validation
    select_seconds: float
    found: Found = part()


@dataclass(frozen=True, kw_only=True)
class ToTest(Record):
    """What the test phase scores of a selection: its runs (and few-shot's other draws, apart)."""

    kind: Kind
    runs: tuple[Trial, ...]
    draws: tuple[Trial, ...] | None = None


@dataclass(frozen=True, kw_only=True)
class MethodChoice(Record):
    """One method's entry in ``selection.json``: what validation chose, written before the test file is read."""

    kind: Kind
    error: str | None = None  # the selection failed
    method: str | None = None
    chosen: str | None = None  # the chosen candidate's settings
    validation: dict[str, float] = flat(is_validation)  # the chosen candidate's scores
    runs: tuple[ListedTrial, ...] | None = None
    draws: tuple[ListedTrial, ...] | None = None


@dataclass(frozen=True, kw_only=True)
class SplitSizes(Record):
    train_rows: int
    validation_rows: int
    cv_folds: int | None = None


@dataclass(frozen=True, kw_only=True)
class Choices(Record):
    """``selection.json``: every method's choice."""

    split: SplitSizes
    methods: tuple[MethodChoice, ...]


@dataclass(frozen=True, kw_only=True)
class Accuracy(Record):
    accuracy: float
    macro_f1: float

    def metric_values(self) -> dict[str, float]:
        return {"accuracy": self.accuracy, "macro_f1": self.macro_f1}


@dataclass(frozen=True, kw_only=True)
class SeedAccuracy(Accuracy):
    seed: int


@dataclass(frozen=True, kw_only=True)
class LabelTest(SeedAccuracy):
    """One run on a label task's test rows: accuracy, macro-F1, and every row's label scores."""

    scores: tuple[tuple[float, ...], ...]  # [rows, labels] log-probabilities


@dataclass(frozen=True, kw_only=True)
class TextTest(Record):
    """One run on a text task's test inputs: every metric, the per-input statistics any resample can reuse,
    and its greedy outputs."""

    seed: int
    metrics: dict[str, float] = flat(lambda key: key in METRICS or key == "ppl")  # ce, bleu, chrf, rougeL, ppl
    nll: tuple[tuple[float, float], ...]  # per input: its references' summed negative log-likelihood, tokens
    outputs: tuple[str, ...]
    showcase: tuple[str, ...] = ()  # the preset's raw showcase inputs' outputs

    def metric_values(self) -> dict[str, float]:
        return dict(self.metrics)


@dataclass(frozen=True, kw_only=True)
class TestCosts(Record):
    eval_rows: int  # test rows scored (a slow method may score only the first)
    test_seconds: float
    ms_per_example: float
    adapter_bytes: int  # what a user ships of the method


@dataclass(frozen=True, kw_only=True)
class Tested(Phase):
    """A method's runs scored on the test rows."""

    costs: TestCosts = part()


@dataclass(frozen=True, kw_only=True)
class LabelTested(Tested):
    runs: tuple[LabelTest, ...]
    draw_runs: tuple[LabelTest, ...] | None = None  # few-shot's other draws, never in its score


@dataclass(frozen=True, kw_only=True)
class TextTested(Tested):
    runs: tuple[TextTest, ...]
    draw_runs: tuple[TextTest, ...] | None = None


Test = TypeVar("Test", LabelTested, TextTested)


@dataclass(frozen=True)
class Outcome(Generic[Test]):
    """One method's two phases, as compare hands them to the summary (in memory, never a file of its own): its
    selection on validation, then (when it chose) its runs on the test rows."""

    kind: Kind
    selection: Selection | Failed
    test: Test | Failed | None = None  # None: the selection failed, nothing was tested


# The files compare reads back: a phase's result (or its failure).
SELECTION: TypeAdapter[Selection | Failed] = TypeAdapter(Selection | Failed)
LABEL_TESTED: TypeAdapter[LabelTested | Failed] = TypeAdapter(LabelTested | Failed)
TEXT_TESTED: TypeAdapter[TextTested | Failed] = TypeAdapter(TextTested | Failed)
TO_TEST = TypeAdapter(ToTest)
