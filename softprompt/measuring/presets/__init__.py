"""Task presets: what a task's rows look like to a model, for the two kinds of task compare measures.

A preset is a JSON file shipped in this folder (or any JSON file the user names); the data is
never shipped, it is read from a directory the user gives (``--data``).

- :class:`Preset` (labels): a template, an instruction and label words. Label words are the
  verbalisations scored by rank classification and learned as targets by every tuned method;
  the shipped presets use words that are one token each for the SmolLM2 tokenizer, so all labels
  are scored from a single forward pass per row.
- :class:`TextPreset` (``"kind": "text"``: text the model writes): a template, a target column, optional
  reference lists, a stop rule and a length cap for decoding, and the metric validation selects on.
"""

from __future__ import annotations

import json
import string
from dataclasses import MISSING, dataclass, field
from pathlib import Path
from typing import Any

from softprompt.core.config_types import check_types
from softprompt.core.data import Row, read_rows
from softprompt.core.errors import ConfigError, DataError

PRESET_DIR = Path(__file__).parent
TARGET_COLUMN = "_target"  # column added to rows: the label word the model learns to output


@dataclass(frozen=True)
class Preset:
    name: str = field(metadata={"help": "task name"})
    template: str = field(metadata={"help": "input template with {column} fields, ending where the label goes"})
    label_words: dict[str, str] = field(metadata={"help": "dataset label -> word the model outputs"})
    label_column: str = field(default="label", metadata={"help": "column holding the dataset label"})
    instruction: str = field(default="", metadata={"help": "zero-shot instruction put before the input"})
    train_file: str = field(default="train.jsonl", metadata={"help": "training file inside the data directory"})
    test_file: str = field(default="test.jsonl", metadata={"help": "test file inside the data directory"})
    description: str = field(default="", metadata={"help": "one line about the task"})

    def __post_init__(self) -> None:
        if len(self.label_words) < 2:
            raise ConfigError(f"preset {self.name!r} needs at least two labels, got {list(self.label_words)}")
        words = list(self.label_words.values())
        if len(set(words)) != len(words):
            raise ConfigError(f"preset {self.name!r}: label words must be distinct, got {words}")
        try:
            fields = [f for _, f, _, _ in string.Formatter().parse(self.template) if f is not None]
        except ValueError as exc:
            raise ConfigError(f"preset {self.name!r}: template is malformed: {exc}") from exc
        if not fields:
            raise ConfigError(f"preset {self.name!r}: template has no {{column}} field")

    @property
    def labels(self) -> list[str]:
        return list(self.label_words)

    @property
    def words(self) -> list[str]:
        return list(self.label_words.values())

    def fill(self, row: Row) -> str:
        """The templated input of one row (without instruction or label)."""
        try:
            return self.template.format(**row)
        except KeyError as exc:
            raise DataError(f"preset {self.name!r}: row has no column {exc} (columns: {', '.join(row)})") from None

    def label_index(self, row: Row, where: str) -> int:
        label = str(row.get(self.label_column))
        if label not in self.label_words:
            raise DataError(f"{where}: label {label!r} is not one of {', '.join(self.label_words)}")
        return self.labels.index(label)

    def answer(self, row: Row, where: str) -> str:
        """What the model learns to write after the row's input: its label word."""
        return self.words[self.label_index(row, where)]

    def stratum(self, row: Row, where: str) -> int:
        """The class a validation split and few-shot examples balance over: the label."""
        return self.label_index(row, where)

    def check_row(self, row: Row, where: str) -> None:
        self.label_index(row, where)

    def with_target(self, rows: list[Row], where: str) -> list[Row]:
        """Rows with the label word in TARGET_COLUMN, ready for a supervised DataConfig."""
        return [{**row, TARGET_COLUMN: self.answer(row, f"{where}, row {i + 1}")} for i, row in enumerate(rows)]


# What validation selects a text task's candidates on: (record key, higher is better).
TEXT_METRICS = {
    "ce": ("val_ce", False),
    "bleu": ("val_bleu", True),
    "chrf": ("val_chrf", True),
    "rougeL": ("val_rougeL", True),
}


@dataclass(frozen=True)
class TextPreset:
    """A task whose output is text: the model writes the target column after the filled template."""

    name: str = field(metadata={"help": "task name"})
    template: str = field(metadata={"help": "input template with {column} fields, ending where the output goes"})
    target_column: str = field(metadata={"help": "column holding what the model must write"})
    references_column: str | None = field(
        default=None, metadata={"help": "column holding a list of every correct output (test rows; default: target)"}
    )
    group_column: str | None = field(
        default=None,
        metadata={
            "help": "rows sharing this column are one input with several references (kept on one side of a split)"
        },
    )
    instruction: str = field(default="", metadata={"help": "zero-shot instruction put before the input"})
    train_file: str = field(default="train.jsonl", metadata={"help": "training file inside the data directory"})
    test_file: str = field(default="test.jsonl", metadata={"help": "test file inside the data directory"})
    split_at: int | None = field(
        default=None, metadata={"help": "train on the first N rows of the training file, test on the rest"}
    )
    stop: tuple[str, ...] = field(default=(), metadata={"help": "strings that end a generation"})
    max_new_tokens: int = field(default=64, metadata={"help": "length cap of every generation, in tokens"})
    primary_metric: str = field(default="bleu", metadata={"help": "what validation selects on: ce, bleu, chrf, rougeL"})
    showcase: tuple[str, ...] = field(
        default=(), metadata={"help": "raw inputs every method writes for, shown side by side (no template)"}
    )
    showcase_rows: int = field(default=5, metadata={"help": "test rows shown side by side with their references"})
    description: str = field(default="", metadata={"help": "one line about the task"})

    def __post_init__(self) -> None:
        check_types(self)
        from softprompt.core.data import DataConfig

        DataConfig(template=self.template, target_column=self.target_column)  # the same template rules as training
        if not self.target_column:
            raise ConfigError(f"preset {self.name!r}: a text task needs a target_column (what the model writes)")
        if self.max_new_tokens < 1:
            raise ConfigError(f"preset {self.name!r}: max_new_tokens must be at least 1, got {self.max_new_tokens}")
        if self.primary_metric not in TEXT_METRICS:
            raise ConfigError(
                f"preset {self.name!r}: primary_metric must be one of {', '.join(TEXT_METRICS)}, "
                f"got {self.primary_metric!r}"
            )
        if self.split_at is not None and self.split_at < 2:
            raise ConfigError(f"preset {self.name!r}: split_at must be at least 2, got {self.split_at}")
        if any(not s for s in self.stop) or self.showcase_rows < 0:
            raise ConfigError(f"preset {self.name!r}: stop strings must not be empty, showcase_rows >= 0")

    @property
    def labels(self) -> list[str]:
        return [""]  # one stratum: nothing to balance over

    @property
    def selects_on(self) -> tuple[str, bool]:
        return TEXT_METRICS[self.primary_metric]

    def fill(self, row: Row) -> str:
        from softprompt.core.data import fill_template

        try:
            return fill_template(self.template, {k: str(v) for k, v in row.items()})
        except KeyError as exc:
            raise DataError(f"preset {self.name!r}: row has no column {exc} (columns: {', '.join(row)})") from None

    def answer(self, row: Row, where: str) -> str:
        value = row.get(self.target_column)
        if not isinstance(value, str) or not value.strip():
            raise DataError(f"{where}: column {self.target_column!r} must hold the text to write, got {value!r}")
        return value

    def references(self, row: Row, where: str) -> list[str]:
        """Every correct output of a row: its reference list, or its target alone."""
        if self.references_column is None or self.references_column not in row:
            return [self.answer(row, where)]
        refs = row[self.references_column]
        if not isinstance(refs, list) or not refs or not all(isinstance(r, str) and r.strip() for r in refs):
            raise DataError(
                f"{where}: column {self.references_column!r} must be a non-empty list of texts, got {refs!r}"
            )
        return list(refs)

    def stratum(self, row: Row, where: str) -> int:
        return 0

    def check_row(self, row: Row, where: str) -> None:
        missing = [f for f in _fields(self.template) if f not in row]
        if missing:
            raise DataError(f"{where}: template field {{{missing[0]}}} has no column (columns: {', '.join(row)})")
        self.answer(row, where)
        if self.references_column is not None and self.references_column in row:
            self.references(row, where)

    def with_target(self, rows: list[Row], where: str) -> list[Row]:
        return [{**row, TARGET_COLUMN: self.answer(row, f"{where}, row {i + 1}")} for i, row in enumerate(rows)]


AnyPreset = Preset | TextPreset


def _fields(template: str) -> list[str]:
    return [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]


def available_presets() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.json"))


def load_preset(ref: str) -> AnyPreset:
    """A shipped preset by name, or a JSON file path with the same keys (``"kind": "text"``: a text task)."""
    path = Path(ref) if ref.endswith(".json") else PRESET_DIR / f"{ref}.json"
    if not path.is_file():
        raise ConfigError(f"unknown preset {ref!r}: use one of {', '.join(available_presets())} or a .json file")
    try:
        raw: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a JSON object of preset fields")
    kind = raw.get("kind", "labels")
    if kind not in ("labels", "text"):
        raise ConfigError(f"{path}: kind must be labels or text, got {kind!r}")
    cls: Any = TextPreset if kind == "text" else Preset
    known = cls.__dataclass_fields__
    required = [n for n, f in known.items() if f.default is MISSING and n not in raw]
    if required:
        raise ConfigError(f"{path}: a {kind} preset needs {', '.join(required)}")
    try:
        return cls(**{k: v for k, v in raw.items() if k in known})  # type: ignore[no-any-return]
    except (TypeError, ConfigError) as exc:
        raise ConfigError(f"{path}: {exc}") from None


@dataclass
class TaskData:
    preset: Preset
    train: list[Row]
    test: list[Row]

    def test_labels(self) -> list[int]:
        return [self.preset.label_index(r, f"test row {i + 1}") for i, r in enumerate(self.test)]


def load_task(
    preset: Preset, data_dir: str | Path, train_rows: int | None = None, test_rows: int | None = None
) -> TaskData:
    """Read the preset's train and test files from ``data_dir``; optionally only the first N rows."""
    return TaskData(preset, load_train_rows(preset, data_dir, train_rows), load_test_rows(preset, data_dir, test_rows))


def load_train_rows(preset: AnyPreset, data_dir: str | Path, limit: int | None = None) -> list[Row]:
    """The training file's rows (optionally the first N), every row checked: all a model choice may read."""
    split_at = getattr(preset, "split_at", None)
    return _load_rows(
        preset, data_dir, preset.train_file, 0, split_at if limit is None else min(limit, split_at or limit)
    )


def load_test_rows(preset: AnyPreset, data_dir: str | Path, limit: int | None = None) -> list[Row]:
    """The test file's rows (optionally the first N): read by compare only once every choice is made.

    A preset that splits one file (``split_at``) tests on the rows after its training rows."""
    split_at = getattr(preset, "split_at", None)
    if split_at is not None:
        return _load_rows(preset, data_dir, preset.train_file, split_at, None if limit is None else split_at + limit)
    return _load_rows(preset, data_dir, preset.test_file, 0, limit)


def _load_rows(preset: AnyPreset, data_dir: str | Path, name: str, start: int, stop: int | None) -> list[Row]:
    directory = Path(data_dir).expanduser()
    if not directory.is_dir():
        raise DataError(f"data directory not found: {directory} (the preset {preset.name!r} reads its files from it)")
    rows = read_rows(str(directory / name))[start:stop]
    if not rows:
        raise DataError(f"{directory / name}: no rows from row {start + 1} on (the preset {preset.name!r} reads them)")
    for i, row in enumerate(rows):
        preset.check_row(row, f"{directory / name}, row {start + i + 1}")
    return rows


def few_shot_context(
    preset: AnyPreset, train: list[Row], shots: int, seed: int = 0, *, order: int = 0, instruction: bool = True
) -> str:
    """Instruction (unless ``instruction`` is False) plus ``shots`` solved training examples, labels taken in
    turn (balanced; a text task has one stratum, so its examples are a seeded draw).

    Examples are drawn with a seeded shuffle, so the same seed gives the same context; ``order``
    picks one of the seeded orders of those same examples (0: the default order).
    """
    import random

    by_label: dict[int, list[Row]] = {i: [] for i in range(len(preset.labels))}
    shuffled = list(train)
    random.Random(seed).shuffle(shuffled)
    for row in shuffled:
        by_label[preset.stratum(row, "training row")].append(row)
    picked: list[Row] = []
    while len(picked) < shots and any(by_label.values()):
        for label in list(by_label):
            if by_label[label] and len(picked) < shots:
                picked.append(by_label[label].pop())
    # no fixed label order right before the query
    random.Random(seed + 1 if order == 0 else f"order {seed} {order}").shuffle(picked)
    solved = "".join(f"{preset.fill(r)} {preset.answer(r, 'training row')}\n\n" for r in picked)
    return (preset.instruction if instruction else "") + solved
