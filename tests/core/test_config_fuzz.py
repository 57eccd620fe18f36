"""Property tests for configs and generation requests built from hostile JSON values.

A config is either built with every field of its annotated type (ints ints, floats finite,
tuples of strings) or refused with one ConfigError line; a generation request with a valid
config either completes within its token budget or fails with one SoftPromptError line.
"""

from __future__ import annotations

import dataclasses
import typing

import pytest
import torch
from hypothesis import example, given
from hypothesis import strategies as st

from fuzz.properties import HOSTILE_JSON, NASTY_TEXT, fuzz_settings
from fuzz.targets import Targets, expect_clean, tiny_model
from softprompt.cli.main import main
from softprompt.core.data import DataConfig
from softprompt.core.errors import AdapterError, ConfigError, RequestError, SoftPromptError
from softprompt.core.forms import Form, Prompt
from softprompt.core.prompt import PromptConfig
from softprompt.inference.engine import SamplingParams
from softprompt.inference.generate import GenerateConfig, complete

CONFIGS = [DataConfig, PromptConfig, GenerateConfig, SamplingParams]


@pytest.fixture(scope="module")
def base():
    return tiny_model()


def _fields(cls) -> st.SearchStrategy[dict]:
    names = [f.name for f in dataclasses.fields(cls)]
    return st.dictionaries(st.sampled_from(names), HOSTILE_JSON, max_size=4)


def _has_declared_types(config) -> bool:
    hints = typing.get_type_hints(type(config))
    for f in dataclasses.fields(config):
        value, hint = getattr(config, f.name), hints[f.name]
        options = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, type(int | None)) else (hint,)
        if value is None and type(None) in options:
            continue
        kind = next(o for o in options if o is not type(None))
        if typing.get_origin(kind) is tuple:
            assert isinstance(value, tuple) and all(isinstance(v, str) for v in value), (f.name, value)
        else:
            assert isinstance(value, kind), (f.name, value)
            assert kind is not int or not isinstance(value, bool), f.name
    return True


@pytest.mark.parametrize("cls", CONFIGS, ids=lambda c: c.__name__)
@fuzz_settings(150)
@given(data=st.data())
def test_configs_from_hostile_json(cls, data):
    values = data.draw(_fields(cls))
    config = expect_clean(lambda: cls(**values))
    if isinstance(config, SoftPromptError):
        assert isinstance(config, ConfigError)
    else:
        assert _has_declared_types(config)


@fuzz_settings(60)
@given(data=st.binary(max_size=200))
@example(data=b'{"max_new_tokens": 3, "temperature": 1e-300, "seed": 18446744073709551616}')
@example(data=b'{"prompts": ["", "x"], "stop": [""], "init": "labels", "init_labels": "abc"}')
def test_any_bytes_as_request_json(tmp_path_factory, data):
    Targets(tmp_path_factory.getbasetemp()).config_json(data)


TEMPERATURES = st.floats(min_value=1e-300, max_value=1e300) | st.sampled_from([1e-300, 1e-30, 1.0, 1e30])


@fuzz_settings(60)
@given(
    texts=st.lists(NASTY_TEXT, min_size=0, max_size=3),
    max_new_tokens=st.integers(1, 4),
    max_length=st.none() | st.integers(1, 8),
    temperature=st.just(0.0) | TEMPERATURES,
    top_p=st.floats(min_value=1e-300, max_value=1.0),
    top_k=st.integers(0, 10**30),
    repetition_penalty=TEMPERATURES,
    seed=st.none() | st.integers(-(2**63), 2**64 - 1),
    stop=st.lists(NASTY_TEXT.filter(bool), max_size=2),
    with_prompt=st.booleans(),
)
@example(
    texts=["ab"],
    max_new_tokens=3,
    max_length=None,
    temperature=1e-300,
    top_p=1.0,
    top_k=0,
    repetition_penalty=1.0,
    seed=0,
    stop=[],
    with_prompt=True,
)
def test_generation_with_extreme_settings(base, texts, with_prompt, **settings):
    config = GenerateConfig(**settings)
    prompts = [Prompt(Form.VECTORS, torch.randn(3, base.hidden_size)) if with_prompt else None for _ in texts]
    result = expect_clean(lambda: complete(base, texts, prompts, config))
    if isinstance(result, SoftPromptError):
        unpaired = any(not t.encode("utf-8", "surrogatepass").decode("utf-8", "ignore") == t for t in texts)
        assert ("" in texts and "empty" in str(result)) or (unpaired and "surrogate" in str(result))
        return
    assert len(result) == len(texts)
    for completion in result:
        assert len(completion.token_ids) <= config.max_new_tokens
        assert completion.finish_reason in ("stop", "length")


@pytest.mark.parametrize(
    "weights, refusal",
    [
        (torch.full((3, 32), float("nan")), RequestError),  # refused by complete
        (torch.randn(3, 16), AdapterError),  # refused when complete registers it
        (torch.randn(32), ConfigError),  # not a prompt at all: refused by Prompt itself
        (torch.randn(2, 3, 32), ConfigError),
    ],
    ids=["nan", "wrong-hidden", "1-d", "3-d"],
)
def test_generation_refuses_unusable_soft_prompts(base, weights, refusal):
    config = GenerateConfig(max_new_tokens=2)
    result = expect_clean(lambda: complete(base, ["hello"], [Prompt(Form.VECTORS, weights)], config))
    assert isinstance(result, refusal)


@pytest.mark.parametrize(
    "files",
    [
        {},
        {"adapter_model.safetensors": b"garbage", "adapter_config.json": b"{}"},
        {"adapter_model.bin": b"\x80\x04K\x01."},
    ],
    ids=["empty-dir", "garbage", "pickle-only"],
)
def test_cli_reports_bad_adapters_in_one_line(tmp_path, capsys, files, tiny_dirs):
    adapter = tmp_path / "adapter\nname"  # a line break in the path must not split the message
    adapter.mkdir()
    for name, data in files.items():
        (adapter / name).write_bytes(data)
    code = main(["generate", "--model", str(tiny_dirs["llama"]), "--adapter", str(adapter), "--device", "cpu", "hi"])
    err = capsys.readouterr().err.strip()  # progress bars from model loading come first
    assert code == 2 and err.count("softprompt: error: ") == 1, err
    assert err.splitlines()[-1].startswith("softprompt: error: ") and "adapter\\nname" in err, err
