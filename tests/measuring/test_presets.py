"""Shipped task presets load, validate and build few-shot contexts; data is read from a user path."""

import json

import pytest

from softprompt.core.errors import ConfigError, DataError
from softprompt.measuring.presets import (
    TARGET_COLUMN,
    Preset,
    TextPreset,
    available_presets,
    few_shot_context,
    load_preset,
    load_task,
    load_test_rows,
    load_train_rows,
)
from tests.measuring.compare_helpers import tiny_task_dir
from tests.measuring.text_helpers import tiny_text_dir


def test_all_presets_load():
    names = available_presets()
    assert {"twitter_complaints", "sst2", "trec", "rte", "roles", "dart"} <= set(names)
    for name in names:
        preset = load_preset(name)
        assert preset.name == name
        assert preset.fill({k: "x" for k in ("text", "premise", "hypothesis", "act", "triples")})
        if isinstance(preset, Preset):
            assert len(preset.labels) >= 2
        else:
            assert preset.target_column and preset.max_new_tokens >= 1
    assert len(load_preset("trec").labels) == 6


def test_preset_validation(tmp_path):
    with pytest.raises(ConfigError, match="distinct"):
        Preset(name="x", template="{text}", label_words={"a": "w", "b": "w"})
    with pytest.raises(ConfigError, match="no \\{column\\}"):
        Preset(name="x", template="no fields", label_words={"a": "1", "b": "2"})
    with pytest.raises(ConfigError, match="unknown preset"):
        load_preset("nope")
    custom = tmp_path / "mine.json"
    custom.write_text(
        json.dumps({"name": "mine", "template": "Q: {q}\nA:", "label_words": {"y": "yes", "n": "no"}, "future_key": 1})
    )
    assert load_preset(str(custom)).words == ["yes", "no"]


def test_load_task_and_targets(tmp_path):
    data = tiny_task_dir(tmp_path / "d")
    preset = load_preset("twitter_complaints")
    task = load_task(preset, data, train_rows=4, test_rows=3)
    assert len(task.train) == 4 and len(task.test) == 3
    assert task.test_labels() == [preset.label_index(r, "") for r in task.test]
    targets = [r[TARGET_COLUMN] for r in preset.with_target(task.train, "train")]
    assert set(targets) <= {"yes", "no"}
    with pytest.raises(DataError, match="not found"):
        load_task(preset, tmp_path / "missing")
    (data / "test.jsonl").write_text(json.dumps({"text": "t", "label": "maybe"}) + "\n")
    with pytest.raises(DataError, match="row 1: label 'maybe'"):
        load_task(preset, data)


def test_few_shot_context_is_balanced_and_seeded(tmp_path):
    preset = load_preset("twitter_complaints")
    task = load_task(preset, tiny_task_dir(tmp_path / "d"))
    context = few_shot_context(preset, task.train, 4, seed=1)
    assert context.startswith(preset.instruction)
    assert context.count("Complaint: yes") == 2 and context.count("Complaint: no") == 2
    assert context == few_shot_context(preset, task.train, 4, seed=1)


def test_text_presets_read_the_shared_data(tmp_path):
    """The walkthrough's task: the first 50 rows of the role file train, the rest test; DART tests on reference lists."""
    from pathlib import Path

    shared = Path(__file__).parents[3] / "shared" / "data"
    if not shared.is_dir():
        pytest.skip("../shared/data is not beside the repository")
    roles = load_preset("roles")
    train = load_train_rows(roles, shared / "awesome-chatgpt-prompts")
    test = load_test_rows(roles, shared / "awesome-chatgpt-prompts")
    assert len(train) == 50 and len(test) == 119 and train[0]["act"] == "An Ethereum Developer"
    assert load_test_rows(roles, shared / "awesome-chatgpt-prompts", 5) == test[:5]
    dart = load_preset("dart")
    rows = load_test_rows(dart, shared / "dart", 3)
    assert all(dart.references(row, "row") for row in rows) and dart.group_column == "triples"


def test_text_preset_errors_name_the_option_file_and_row(tmp_path):
    with pytest.raises(ConfigError, match="max_new_tokens must be at least 1"):
        TextPreset(name="t", template="{a}", target_column="b", max_new_tokens=0)
    with pytest.raises(ConfigError, match="primary_metric"):
        TextPreset(name="t", template="{a}", target_column="b", primary_metric="meteor")
    data, path = tiny_text_dir(tmp_path / "d")
    raw = json.loads(path.read_text())
    del raw["target_column"]
    path.write_text(json.dumps(raw))
    with pytest.raises(ConfigError, match=r"preset.json: a text preset needs target_column"):
        load_preset(str(path))
    path.write_text(json.dumps({**raw, "target_column": "text", "max_new_tokens": 0}))
    with pytest.raises(ConfigError, match=r"preset.json: preset 'tiny_text': max_new_tokens must be at least 1"):
        load_preset(str(path))
    data, path = tiny_text_dir(tmp_path / "e")
    lines = (data / "test.jsonl").read_text().splitlines()
    bad = json.loads(lines[2])
    bad["references"] = []
    (data / "test.jsonl").write_text("\n".join([*lines[:2], json.dumps(bad), *lines[3:]]) + "\n")
    with pytest.raises(DataError, match=r"test.jsonl, row 3: column 'references' must be a non-empty list"):
        load_test_rows(load_preset(str(path)), data)
    (data / "train.jsonl").write_text(json.dumps({"text": "no triples here"}) + "\n")
    with pytest.raises(DataError, match=r"train.jsonl, row 1: template field \{triples\} has no column"):
        load_train_rows(load_preset(str(path)), data)
