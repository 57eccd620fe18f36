import pytest

from softprompt.core.data import DEMO_DATA, DataConfig, batches, label_words, load_examples, read_rows
from softprompt.core.errors import ConfigError, DataError
from softprompt.core.inject import IGNORE_INDEX
from tests.conftest import byte_tokenizer


@pytest.fixture(scope="module")
def tok():
    return byte_tokenizer()


def test_demo_data_has_train_and_held_out_rows():
    rows = read_rows(str(DEMO_DATA))
    assert len(rows) >= 60 and set(rows[0]) == {"act", "prompt"}


def test_limit_splits_train_and_held_out(tok):
    train, held_out = load_examples(DataConfig(limit=50, max_length=32), tok)
    assert len(train) == 50 and len(held_out) == len(read_rows(str(DEMO_DATA))) - 50
    assert all(len(e.input_ids) <= 32 and e.labels == e.input_ids for e in train)


def test_jsonl_supervised_rows_score_only_the_target(tmp_path, tok):
    path = tmp_path / "d.jsonl"
    path.write_text('{"text": "great", "label": "positive"}\n\n{"text": "bad", "label": "negative"}\n')
    config = DataConfig(data=str(path), template="Review: {text} Sentiment:", target_column="label", eval_rows=1)
    train, held_out = load_examples(config, tok)
    example = train[0]
    scored = [t for t in example.labels if t != IGNORE_INDEX]
    assert tok.decode(scored[:-1]) == " positive" and scored[-1] == tok.eos_token_id
    assert tok.decode(example.input_ids[: example.labels.index(scored[0])]) == "Review: great Sentiment:"
    assert len(held_out) == 1 and label_words(config) == ("positive", "negative")


def test_batches_are_left_padded(tok):
    train, _ = load_examples(DataConfig(limit=5, max_length=40), tok)
    batch = next(batches(train[:3], 3, tok.pad_token_id, group_by_length=False))
    assert batch.attention_mask[:, -1].tolist() == [1, 1, 1]
    assert (batch.attention_mask.cumsum(1) > 0).eq(batch.attention_mask.bool()).all()


@pytest.mark.parametrize(
    "content, suffix, config, message",
    [
        ("act,other\nx,y\n", ".csv", {}, "row 1: no column 'prompt'"),
        ("act,prompt\n", ".csv", {}, "no data rows"),
        ("", ".csv", {}, "is empty: expected a header"),
        ("act,prompt\nx,\n", ".csv", {}, "row 1: column 'prompt' is empty"),
        ("act,prompt\nx,y,z\n", ".csv", {}, "line 2: more fields"),
        ('{"prompt": "hi there"}\n{oops\n', ".jsonl", {}, "line 2: invalid JSON"),
        ("[1, 2]\n", ".jsonl", {}, "line 1: expected a JSON object"),
        ('{"prompt": ["a"]}\n', ".jsonl", {}, "holds a list"),
        ("a\tb\n", ".tsv", {}, "unsupported file type"),
    ],
)
def test_bad_data_names_file_row_and_field(tmp_path, tok, content, suffix, config, message):
    path = tmp_path / f"data{suffix}"
    path.write_text(content)
    with pytest.raises(DataError, match=message) as info:
        load_examples(DataConfig(data=str(path), eval_rows=0, **config), tok)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_non_utf8_file_names_the_line(tmp_path, tok):
    path = tmp_path / "latin1.csv"
    path.write_bytes("act,prompt\nx,ok\ny,caf\xe9\n".encode("latin-1"))
    with pytest.raises(DataError, match=r"line 3: not valid UTF-8"):
        read_rows(str(path))


def test_missing_file_and_offline_hub_dataset():
    with pytest.raises(DataError, match="not found"):
        read_rows("/nonexistent/data.csv")
    with pytest.raises(DataError, match="cannot load Hugging Face dataset"):
        read_rows("hf:no-such-user/no-such-dataset-xyz")


@pytest.mark.parametrize(
    "kwargs", [dict(template="x {text}"), dict(limit=0), dict(max_length=1), dict(template="{", target_column="y")]
)
def test_bad_data_options(kwargs):
    with pytest.raises(ConfigError):
        DataConfig(**kwargs)


def test_inputs_start_with_the_tokenizers_own_start_tokens(tmp_path):
    """Llama/Gemma-style tokenizers put a BOS before every input: training rows keep it (unscored),
    truncation keeps it, and a target continuation never gets one."""
    from softprompt.core.data import encode_input, start_tokens, tokenize_rows

    bos_tok = byte_tokenizer(bos=True)
    bos = start_tokens(bos_tok)
    assert bos == [bos_tok.eos_token_id] and start_tokens(byte_tokenizer()) == []
    text = DataConfig(max_length=5)
    (row,) = tokenize_rows([{"prompt": "abcdefgh"}], text, bos_tok)
    assert row.input_ids[:1] == bos and len(row.input_ids) == 5 and row.labels[0] == IGNORE_INDEX
    supervised = DataConfig(template="Q: {q} A:", target_column="a", max_length=8)
    (row,) = tokenize_rows([{"q": "a long question", "a": "yes"}], supervised, bos_tok)
    target = bos_tok(" yes", add_special_tokens=False)["input_ids"] + [bos_tok.eos_token_id]
    assert row.input_ids[0] == bos[0] and row.input_ids[-len(target) :] == target and len(row.input_ids) == 8
    assert row.labels == [IGNORE_INDEX] * (8 - len(target)) + target
    assert encode_input(bos_tok, "xyz", 3) == bos + bos_tok("yz", add_special_tokens=False)["input_ids"]


def test_an_unpaired_surrogate_names_the_row(tmp_path, tok):
    path = tmp_path / "rows.jsonl"
    path.write_text('{"prompt": "fine text"}\n{"prompt": "bad \\ud800 text"}\n')
    with pytest.raises(DataError, match=r"rows.jsonl, row 2: text is not valid Unicode: an unpaired surrogate"):
        load_examples(DataConfig(data=str(path), limit=1), tok)


def test_data_config_default_points_at_shipped_demo_data():
    from pathlib import Path

    assert Path(DataConfig().data).is_file()
