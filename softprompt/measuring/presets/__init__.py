"""Task presets: a template, an instruction and label words for a classification dataset.

A preset is a JSON file shipped in this folder (or any JSON file the user names); the data is
never shipped, it is read from a directory the user gives (``--data``). Label words are the
verbalisations scored by rank classification and learned as targets by every tuned method;
the shipped presets use words that are one token each for the SmolLM2 tokenizer, so all labels
are scored from a single forward pass per row.
"""

from __future__ import annotations

import json
import string
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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

    def with_target(self, rows: list[Row], where: str) -> list[Row]:
        """Rows with the label word in TARGET_COLUMN, ready for a supervised DataConfig."""
        return [
            {**row, TARGET_COLUMN: self.words[self.label_index(row, f"{where}, row {i + 1}")]}
            for i, row in enumerate(rows)
        ]


def available_presets() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.json"))


def load_preset(ref: str) -> Preset:
    """A shipped preset by name, or a JSON file path with the same keys."""
    path = Path(ref) if ref.endswith(".json") else PRESET_DIR / f"{ref}.json"
    if not path.is_file():
        raise ConfigError(f"unknown preset {ref!r}: use one of {', '.join(available_presets())} or a .json file")
    try:
        raw: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path} is not valid JSON: {exc}") from exc
    known = Preset.__dataclass_fields__
    return Preset(**{k: v for k, v in raw.items() if k in known})


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


def load_train_rows(preset: Preset, data_dir: str | Path, limit: int | None = None) -> list[Row]:
    """The training file's rows (optionally the first N), every label checked: all a model choice may read."""
    return _load_rows(preset, data_dir, preset.train_file, limit)


def load_test_rows(preset: Preset, data_dir: str | Path, limit: int | None = None) -> list[Row]:
    """The test file's rows (optionally the first N): read by compare only once every choice is made."""
    return _load_rows(preset, data_dir, preset.test_file, limit)


def _load_rows(preset: Preset, data_dir: str | Path, name: str, limit: int | None) -> list[Row]:
    directory = Path(data_dir).expanduser()
    if not directory.is_dir():
        raise DataError(f"data directory not found: {directory} (the preset {preset.name!r} reads its files from it)")
    rows = read_rows(str(directory / name))[:limit]
    for i, row in enumerate(rows):
        preset.label_index(row, f"{directory / name}, row {i + 1}")
    return rows


def few_shot_context(
    preset: Preset, train: list[Row], shots: int, seed: int = 0, *, order: int = 0, instruction: bool = True
) -> str:
    """Instruction (unless ``instruction`` is False) plus ``shots`` solved training examples, labels taken in
    turn (balanced).

    Examples are drawn with a seeded shuffle, so the same seed gives the same context; ``order``
    picks one of the seeded orders of those same examples (0: the default order).
    """
    import random

    by_label: dict[int, list[Row]] = {i: [] for i in range(len(preset.labels))}
    shuffled = list(train)
    random.Random(seed).shuffle(shuffled)
    for row in shuffled:
        by_label[preset.label_index(row, "training row")].append(row)
    picked: list[Row] = []
    while len(picked) < shots and any(by_label.values()):
        for label in list(by_label):
            if by_label[label] and len(picked) < shots:
                picked.append(by_label[label].pop())
    # no fixed label order right before the query
    random.Random(seed + 1 if order == 0 else f"order {seed} {order}").shuffle(picked)
    solved = "".join(f"{preset.fill(r)} {preset.words[preset.label_index(r, 'training row')]}\n\n" for r in picked)
    return (preset.instruction if instruction else "") + solved
