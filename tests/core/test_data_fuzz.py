"""Property tests for dataset files and templates: rows, examples, or one DataError/ConfigError line.

Beyond "never crashes", well-formed files must read back exactly what was written (a reader that
splits a row at a form feed corrupts data without any error).
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest
from hypothesis import assume, example, given
from hypothesis import strategies as st

from fuzz.properties import HOSTILE_JSON, NASTY_TEXT, fuzz_settings, json_dumps_or_none
from fuzz.targets import byte_tokenizer, expect_clean
from softprompt.core.data import DataConfig, read_rows, tokenize_row
from softprompt.core.errors import ConfigError, DataError, SoftPromptError
from softprompt.core.inject import IGNORE_INDEX

TOKENIZER = byte_tokenizer()


def _write(directory: Path, data: bytes, suffix: str) -> str:
    path = directory / f"written{suffix}"
    path.write_bytes(data)
    return str(path)


# -- any bytes -----------------------------------------------------------------------------------


@fuzz_settings(60)
@given(data=st.binary(max_size=400))
@example(data=b'"' + b"x" * 1_000_010 + b'",b\n1,2\n')  # a header field over the csv size limit
@example(data=b"a,b\n1,\xff\n")
def test_any_bytes_as_csv(targets, data):
    targets.csv_file(data)


@fuzz_settings(60)
@given(data=st.binary(max_size=400))
@example(data=b'{"a": ' + b"1" * 5000 + b"}\n")  # an integer over Python's 4300-digit str limit
@example(data=b"[" * 100_000)  # nesting deeper than the recursion limit
def test_any_bytes_as_jsonl(targets, data):
    targets.jsonl_file(data)


# -- structured but hostile ----------------------------------------------------------------------


@fuzz_settings(60)
@given(
    header=st.lists(NASTY_TEXT, max_size=4),
    rows=st.lists(st.lists(NASTY_TEXT, max_size=5), max_size=4),
    bom=st.booleans(),
    bad_byte=st.none() | st.tuples(st.integers(0, 10_000), st.sampled_from([b"\xff", b"\xc3", b"\xed\xa0\x80"])),
)
def test_ragged_csv_with_bad_bytes(targets, header, rows, bom, bad_byte):
    buffer = io.StringIO()
    csv.writer(buffer).writerows([header, *rows])  # ragged: rows may be shorter or longer than the header
    data = (b"\xef\xbb\xbf" if bom else b"") + buffer.getvalue().encode("utf-8", "surrogatepass")
    if bad_byte is not None:
        at = bad_byte[0] % (len(data) + 1)
        data = data[:at] + bad_byte[1] + data[at:]
    targets.csv_file(data)


@fuzz_settings(60)
@given(lines=st.lists(HOSTILE_JSON.map(json_dumps_or_none) | NASTY_TEXT, max_size=5))
def test_jsonl_of_wrong_types(targets, lines):
    targets.jsonl_file("\n".join(line or "" for line in lines).encode("utf-8", "surrogatepass"))


@fuzz_settings(30)
@given(columns=st.lists(NASTY_TEXT, min_size=1, max_size=3), cell=HOSTILE_JSON, size=st.sampled_from([1, 10**5]))
def test_rows_with_hostile_cells_tokenize_or_fail_cleanly(columns, cell, size):
    row = {c: cell for c in columns}
    row[columns[0]] = cell * size if isinstance(cell, str) else cell  # huge fields too
    config = expect_clean(lambda: DataConfig(text_column=columns[0], max_length=32))
    if isinstance(config, DataConfig):
        example = expect_clean(lambda: tokenize_row(row, config, TOKENIZER, "row 1"))
        if not isinstance(example, SoftPromptError):
            assert 2 <= len(example.input_ids) <= 32 and example.labels == example.input_ids


# -- exact round trips -----------------------------------------------------------------------------

COLUMN = st.text(min_size=1, max_size=8).filter(lambda c: "\x00" not in c)
CELL = st.text(max_size=12).filter(lambda c: "\x00" not in c)


@fuzz_settings(60)
@given(
    header=st.lists(COLUMN, min_size=1, max_size=3, unique=True),
    data=st.data(),
    bom=st.booleans(),
)
@example(header=["a", "b"], data=None, bom=False)  # filled in below: a form feed inside a field
def test_csv_written_by_csv_writer_reads_back_exactly(fuzz_dir, header, data, bom):
    if data is None:
        rows = [["x\x0cy", "\u2028"], ["q\r\nr", "s\rt"]]
    else:
        rows = data.draw(st.lists(st.lists(CELL, min_size=len(header), max_size=len(header)), min_size=1, max_size=4))
    assume(not any(len(header) == 1 and row == [""] for row in rows))  # csv writes a lone "" as ""
    buffer = io.StringIO()
    csv.writer(buffer).writerows([header, *rows])
    path = _write(
        fuzz_dir, (b"\xef\xbb\xbf" if bom else b"") + buffer.getvalue().encode("utf-8", "surrogatepass"), ".csv"
    )
    try:
        assert read_rows(path) == [dict(zip(header, row)) for row in rows]
    except DataError as exc:  # only lone surrogates may fail, and then as invalid UTF-8
        assert "UTF-8" in str(exc)


@fuzz_settings(60)
@given(
    rows=st.lists(
        st.dictionaries(
            COLUMN,
            st.recursive(
                st.none() | st.booleans() | st.integers(-(10**30), 10**30) | st.floats(allow_nan=False) | CELL,
                lambda c: st.lists(c, max_size=2) | st.dictionaries(COLUMN, c, max_size=2),
                max_leaves=4,
            ),
            max_size=3,
        ),
        min_size=1,
        max_size=4,
    ),
    ascii_only=st.booleans(),
    crlf=st.booleans(),
)
@example(rows=[{"text": "a\u2028b\x85c"}], ascii_only=False, crlf=False)
def test_jsonl_reads_back_exactly(fuzz_dir, rows, ascii_only, crlf):
    end = "\r\n" if crlf else "\n"
    text = end.join(json.dumps(row, ensure_ascii=ascii_only) for row in rows) + end + end  # a blank line too
    path = _write(fuzz_dir, text.encode("utf-8", "surrogatepass"), ".jsonl")
    try:
        assert read_rows(path) == rows
    except DataError as exc:
        assert "UTF-8" in str(exc)


def test_invalid_utf8_names_the_line_and_byte(fuzz_dir):
    path = _write(fuzz_dir, b"\xef\xbb\xbfa,b\n1,2\n3,\xff\n", ".csv")
    with pytest.raises(DataError, match=r"line 3: not valid UTF-8 \(byte 13\)"):
        read_rows(path)


# -- templates -------------------------------------------------------------------------------------

TEMPLATE_TEXT = st.lists(st.sampled_from([*"{}[].!:0ab _", "text", "label", "__class__"]), max_size=20).map("".join)


@fuzz_settings(100)
@given(template=TEMPLATE_TEXT | NASTY_TEXT, text=NASTY_TEXT)
def test_any_template_fills_or_fails_cleanly(targets, template, text):
    targets.template(template.encode("utf-8", "surrogatepass") + b"\x00" + text.encode("utf-8", "surrogatepass"))


@fuzz_settings(40)
@given(
    name=st.sampled_from(["text", "label"]),
    access=st.sampled_from([".__class__", ".__init__.__globals__", "[0]", "[__class__]", "!r", "!s", ":>9", ":{x}"]),
)
def test_templates_never_reach_into_python_objects(name, access):
    with pytest.raises(ConfigError, match="template field"):
        DataConfig(template="x {" + name + access + "} y", target_column="label")
    with pytest.raises(ConfigError, match="template field"):
        DataConfig(template="{0} {}", target_column="label")


@fuzz_settings(60)
@given(
    parts=st.lists(st.tuples(st.text(max_size=6), st.sampled_from(["text", "a b", "é", "x-y"])), max_size=4),
    values=st.fixed_dictionaries({k: st.text(min_size=1, max_size=6) for k in ["text", "a b", "é", "x-y"]}),
)
def test_plain_fields_fill_by_concatenation(parts, values):
    literal = [p.replace("{", "{{").replace("}", "}}") for p, _ in parts]
    template = "".join(lit + "{" + name + "}" for lit, (_, name) in zip(literal, parts)) + " =>"
    assume(all(v.strip() for v in values.values()))
    row = {**values, "label": "yes"}
    example = tokenize_row(row, DataConfig(template=template, target_column="label"), TOKENIZER, "row 1")
    expected = "".join(p + values[name] for p, name in parts) + " =>"
    prompt = [t for t, label in zip(example.input_ids, example.labels) if label == IGNORE_INDEX]
    assert TOKENIZER.decode(prompt) == expected
