"""Datasets: read rows, turn them into token ids with a loss mask, and batch them.

Two shapes of data. Text data (``text_column``): the loss covers every token, as in the
reference awesome-chatgpt-prompts walkthrough. Supervised data (``template`` + ``target_column``):
the model sees the filled template and is scored only on the target tokens, as in PEFT's
twitter_complaints example. Errors name the file, the row and the field.
"""

from __future__ import annotations

import codecs
import csv
import io
import json
import random
import string
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers.tokenization_utils_base import PreTrainedTokenizerBase

from softprompt.core.config_types import check_types, shown
from softprompt.core.errors import ConfigError, DataError, RequestError
from softprompt.core.files import require_file
from softprompt.core.inject import IGNORE_INDEX

DEMO_DATA = Path(__file__).parents[1] / "assets" / "demo_roles.csv"
MAX_FIELD_CHARS = 1_000_000
Row = dict[str, Any]


@dataclass(frozen=True)
class DataConfig:
    data: str = field(default=str(DEMO_DATA), metadata={"help": "CSV or JSONL file, or hf:<dataset id>[:split]"})
    text_column: str = field(default="prompt", metadata={"help": "column of text to model (text data)"})
    template: str | None = field(
        default=None, metadata={"help": "input template with {column} fields, e.g. 'Tweet: {text} Label:'"}
    )
    target_column: str | None = field(default=None, metadata={"help": "column the model learns to output"})
    limit: int | None = field(default=None, metadata={"help": "use only the first N rows for training"})
    eval_rows: int | None = field(
        default=None, metadata={"help": "held-out rows (default: all rows after --limit, else 10%%)"}
    )
    eval_data: str | None = field(default=None, metadata={"help": "separate held-out file (same format)"})
    max_length: int = field(default=256, metadata={"help": "truncate each example to this many tokens"})

    def __post_init__(self) -> None:
        check_types(self)
        if (self.template is None) != (self.target_column is None):
            raise ConfigError("supervised data needs both --template and --target-column")
        if self.limit is not None and self.limit < 1:
            raise ConfigError(f"limit must be at least 1, got {shown(self.limit)}")
        if self.eval_rows is not None and self.eval_rows < 0:
            raise ConfigError(f"eval_rows must be >= 0, got {shown(self.eval_rows)}")
        if self.max_length < 2:
            raise ConfigError(f"max_length must be at least 2, got {shown(self.max_length)}")
        if self.template is not None:
            _template_fields(self.template)

    @property
    def supervised(self) -> bool:
        return self.target_column is not None

    def require_files(self) -> None:
        """The data files named exist (``hf:`` datasets are fetched later): checked before a model loads."""
        for option, ref in (("--data", self.data), ("--eval-data", self.eval_data)):
            if ref is not None and not ref.startswith("hf:"):
                require_file(ref, f"{option}: dataset file", DataError)


@dataclass
class Example:
    input_ids: list[int]
    labels: list[int]  # IGNORE_INDEX where no loss is taken


@dataclass
class Batch:
    input_ids: torch.Tensor  # [B, T] left-padded
    attention_mask: torch.Tensor  # [B, T]
    labels: torch.Tensor  # [B, T]

    def to(self, device: torch.device | str) -> Batch:
        return Batch(self.input_ids.to(device), self.attention_mask.to(device), self.labels.to(device))

    @property
    def real_tokens(self) -> int:
        return int(self.attention_mask.sum())


# ---------------------------------------------------------------------------------------------
# Reading


def read_rows(ref: str) -> list[Row]:
    """Read every row of a CSV/JSONL file or a Hugging Face dataset as dicts."""
    if ref.startswith("hf:"):
        return _read_hf(ref[3:])
    path = Path(ref).expanduser()
    if not path.is_file():
        raise DataError(f"dataset file not found: {path}")
    suffix = path.suffix.lower()
    if suffix == ".csv":
        rows = _read_csv(path)
    elif suffix in (".jsonl", ".json"):
        rows = _read_jsonl(path)
    else:
        raise DataError(f"{path}: unsupported file type {suffix!r}; use .csv, .jsonl or hf:<dataset id>")
    if not rows:
        raise DataError(f"{path} has no data rows")
    return rows


def _read_text(path: Path) -> str:
    """The file's text with line endings untouched (read_text would turn a quoted \r\n into \n)."""
    raw = path.read_bytes()
    body = raw[3:] if raw.startswith(codecs.BOM_UTF8) else raw
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError as exc:
        offset = exc.start + len(raw) - len(body)
        line = raw[:offset].count(b"\n") + 1
        raise DataError(f"{path}, line {line}: not valid UTF-8 (byte {offset}); re-save the file as UTF-8") from exc


def _read_csv(path: Path) -> list[Row]:
    csv.field_size_limit(MAX_FIELD_CHARS)
    # newline="" as the csv docs ask: str.splitlines() would also break rows at \x0c, \x1c or
    # \u2028 inside unquoted fields (csv.writer does not quote those), splitting one row in two.
    reader = csv.DictReader(io.StringIO(_read_text(path), newline=""))
    rows = []
    try:
        if not reader.fieldnames:  # reads the header line, which can be malformed too
            raise DataError(f"{path} is empty: expected a header line with column names")
        for row in reader:
            if None in row:
                raise DataError(
                    f"{path}, line {reader.line_num}: more fields than the header's {len(reader.fieldnames)}"
                )
            rows.append(row)
    except csv.Error as exc:
        raise DataError(f"{path}, line {max(reader.line_num, 1)}: malformed CSV ({exc})") from exc
    return rows


def _read_jsonl(path: Path) -> list[Row]:
    rows = []
    # JSON Lines ends lines with \n only; a JSON string may hold a raw \u2028 that splitlines() splits on.
    for number, line in enumerate(_read_text(path).split("\n"), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}, line {number}: invalid JSON ({exc.msg})") from exc
        except (ValueError, RecursionError) as exc:  # integers over 4300 digits, deep nesting
            raise DataError(f"{path}, line {number}: unreadable JSON ({type(exc).__name__}: {exc})") from exc
        if not isinstance(row, dict):
            raise DataError(f"{path}, line {number}: expected a JSON object, got {type(row).__name__}")
        rows.append(row)
    return rows


def _read_hf(spec: str) -> list[Row]:
    name, _, split = spec.partition(":")
    try:
        import datasets

        loaded = datasets.load_dataset(name, split=split or "train")
    except Exception as exc:  # hub, cache and network errors come in many types
        raise DataError(
            f"cannot load Hugging Face dataset {name!r} (split {split or 'train'!r}): {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}. "
            "Offline, download it first where the hub is reachable or export it to CSV/JSONL"
        ) from exc
    return [dict(row) for row in loaded]


# ---------------------------------------------------------------------------------------------
# Tokenizing


def _template_parts(template: str) -> list[tuple[str, str | None]]:
    """(literal text, column name or None) pairs; only plain ``{column}`` fields are accepted.

    str.format would also follow ``{text.__class__}`` and ``{text[0]}`` into Python objects and
    accept positional fields, conversions and format specs; none of that makes sense for a
    column, so it is refused here and templates are filled by plain concatenation.
    """
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise ConfigError(f"template {shown(template)} is malformed: {exc}") from exc
    for _, name, spec, conversion in parsed:
        if name is None:
            continue
        if not name or name.isdigit() or "." in name or "[" in name:
            raise ConfigError(
                f"template field {{{name}}} is not a column name: use {{column}}, without "
                "positions, attributes or indexes"
            )
        if spec or conversion:
            raise ConfigError(f"template field {{{name}}} has a conversion or format spec; use plain {{{name}}}")
    return [(literal, name) for literal, name, _, _ in parsed]


def _template_fields(template: str) -> list[str]:
    return [name for _, name in _template_parts(template) if name is not None]


def fill_template(template: str, values: dict[str, str]) -> str:
    return "".join(literal + (values[name] if name is not None else "") for literal, name in _template_parts(template))


def _cell(row: Row, column: str, where: str) -> str:
    if column not in row:
        raise DataError(f"{where}: no column {column!r} (columns: {shown(list(row))})")
    value = row[column]
    if value is None or (isinstance(value, str) and not value.strip()):
        raise DataError(f"{where}: column {column!r} is empty")
    if isinstance(value, (dict, list)):
        raise DataError(f"{where}: column {column!r} holds a {type(value).__name__}, expected text")
    try:
        return str(value)
    except ValueError as exc:  # an int of over 4300 digits refuses to become a string
        raise DataError(f"{where}: column {column!r} holds a number too long to use as text") from exc


def tokenize_rows(
    rows: list[Row], config: DataConfig, tokenizer: PreTrainedTokenizerBase, source: str = "data", first_row: int = 1
) -> list[Example]:
    """``first_row``: the file's number of ``rows[0]``, so errors name the row as the file counts it."""
    return [tokenize_row(row, config, tokenizer, f"{source}, row {first_row + i}") for i, row in enumerate(rows)]


def tokenize_row(row: Row, config: DataConfig, tokenizer: PreTrainedTokenizerBase, where: str) -> Example:
    try:
        return _tokenize_row(row, config, tokenizer, where)
    except RequestError as exc:
        raise DataError(f"{where}: {exc}") from None


def _tokenize_row(row: Row, config: DataConfig, tokenizer: PreTrainedTokenizerBase, where: str) -> Example:
    if not config.supervised:
        start = start_tokens(tokenizer)
        body = encode_text(tokenizer, _cell(row, config.text_column, where))[: config.max_length - len(start)]
        if len(body) < 2:
            raise DataError(f"{where}: text in {config.text_column!r} is shorter than 2 tokens")
        return Example(start + body, [IGNORE_INDEX] * len(start) + body)
    assert config.template is not None and config.target_column is not None  # checked in DataConfig
    values = {name: _cell(row, name, where) for name in _template_fields(config.template)}
    target_ids = encode_text(tokenizer, " " + _cell(row, config.target_column, where))
    if tokenizer.eos_token_id is not None:
        target_ids.append(tokenizer.eos_token_id)
    target_ids = target_ids[: config.max_length - 1]
    prompt_ids = encode_input(tokenizer, fill_template(config.template, values), config.max_length - len(target_ids))
    return Example(prompt_ids + target_ids, [IGNORE_INDEX] * len(prompt_ids) + target_ids)


def encode_text(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    """Token ids of a piece of text in the middle of an input (a continuation, a label): no special tokens."""
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as exc:  # JSON's "\ud800" decodes to a lone surrogate, which tokenizers reject
            raise RequestError(
                f"text is not valid Unicode: an unpaired surrogate at character {exc.start + 1}"
            ) from None
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def encode_input(tokenizer: PreTrainedTokenizerBase, text: str, max_length: int | None = None) -> list[int]:
    """Token ids of a model input: the tokenizer's own start tokens (Llama's and Gemma's BOS), then the text.

    Every path encodes inputs this way (training rows, scoring, generation, serving, export), so a
    model sees at inference what it saw in training, and what PEFT and lm-evaluation-harness give it:
    the soft prompt goes before the start tokens. Truncation to ``max_length`` keeps the start
    tokens and the end of the text (the end is next to whatever follows: a label, the generation).
    """
    start, body = start_tokens(tokenizer), encode_text(tokenizer, text)
    if max_length is not None:
        body = body[len(body) - max(max_length - len(start), 1) :] if body else body
    return start + body


def start_tokens(tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """The special tokens the tokenizer puts before any text by default (a BOS, or nothing)."""
    probe = "a"
    full, plain = tokenizer(probe)["input_ids"], tokenizer(probe, add_special_tokens=False)["input_ids"]
    for offset in range(len(full) - len(plain) + 1):
        if full[offset : offset + len(plain)] == plain:
            return list(full[:offset])
    return []


# ---------------------------------------------------------------------------------------------
# Splitting and batching


def load_examples(config: DataConfig, tokenizer: PreTrainedTokenizerBase) -> tuple[list[Example], list[Example]]:
    """Train and held-out examples: first ``limit`` rows train, the rest (or ``eval_rows``) held out."""
    rows = read_rows(config.data)
    if config.eval_data:
        train_rows, eval_rows = rows[: config.limit], read_rows(config.eval_data)[: config.eval_rows]
    else:
        train_rows, eval_rows = split_rows(rows, config)
    if not train_rows:
        raise DataError(f"{config.data}: no training rows left after the held-out split")
    train = tokenize_rows(train_rows, config, tokenizer, config.data)
    first = 1 if config.eval_data else len(train_rows) + 1  # held-out rows follow the training rows in the file
    held_out = tokenize_rows(eval_rows, config, tokenizer, config.eval_data or config.data, first)
    return train, held_out


def split_rows(rows: list[Row], config: DataConfig) -> tuple[list[Row], list[Row]]:
    if config.limit is not None:
        train, rest = rows[: config.limit], rows[config.limit :]
        return train, rest[: config.eval_rows] if config.eval_rows is not None else rest
    n_eval = config.eval_rows if config.eval_rows is not None else max(1, len(rows) // 10) if len(rows) > 1 else 0
    return rows[: len(rows) - n_eval], rows[len(rows) - n_eval :]


def label_words(config: DataConfig) -> tuple[str, ...]:
    """The distinct target values, in first-seen order: the class labels of a classification set."""
    if config.target_column is None:
        raise ConfigError("init=labels needs --target-column (or explicit --init-labels)")
    rows = read_rows(config.data)[: config.limit]
    seen = dict.fromkeys(_cell(row, config.target_column, f"{config.data}, row {i + 1}") for i, row in enumerate(rows))
    return tuple(seen)


def left_pad(
    seqs: Sequence[list[int]], pad_id: int, device: torch.device | str | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad id lists to [B, T] ids and mask: every row ends at the last column, so virtual
    tokens and decoding line up."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for row, seq in enumerate(seqs):
        if seq:
            ids[row, width - len(seq) :] = torch.tensor(seq)
            mask[row, width - len(seq) :] = 1
    return ids.to(device), mask.to(device)


def collate(examples: list[Example], pad_id: int) -> Batch:
    ids, mask = left_pad([e.input_ids for e in examples], pad_id)
    labels, _ = left_pad([e.labels for e in examples], IGNORE_INDEX)
    return Batch(ids, mask, labels)


def batches(
    examples: list[Example],
    batch_size: int,
    pad_id: int,
    *,
    shuffle: bool = False,
    seed: int = 0,
    group_by_length: bool = True,
) -> Iterator[Batch]:
    """Yield batches; with grouping, rows of similar length share a batch so little is padding.

    Grouping sorts within windows of 50 batches (after shuffling), which keeps batch contents
    random across epochs while cutting padding, the approach of transformers' length-grouped
    sampler.
    """
    order = list(range(len(examples)))
    if shuffle:
        random.Random(seed).shuffle(order)
    if group_by_length:
        window = batch_size * 50
        order = [
            i
            for s in range(0, len(order), window)
            for i in sorted(order[s : s + window], key=lambda i: -len(examples[i].input_ids))
        ]
    chunks = [order[s : s + batch_size] for s in range(0, len(order), batch_size)]
    if shuffle:
        random.Random(seed + 1).shuffle(chunks)
    for chunk in chunks:
        yield collate([examples[i] for i in chunk], pad_id)
