"""Property test of the server's request handling: any JSON body gets a 2xx or an OpenAI-style 4xx, never a 5xx."""

from __future__ import annotations

import json
from urllib.parse import quote

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from softprompt.inference.engine import AdapterRegistry, Engine, EngineConfig
from softprompt.inference.serve import ServeConfig, create_app
from tests.inference.serving import llama_with_adapters

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)
FIELDS = [
    "model",
    "prompt",
    "messages",
    "max_tokens",
    "temperature",
    "top_p",
    "stop",
    "seed",
    "stream",
    "n",
    "logprobs",
    "top_logprobs",
    "stream_options",
    "echo",
    "best_of",
    "suffix",
    "logit_bias",
    "max_completion_tokens",
    "presence_penalty",
    "name",
    "path",
]
# Bodies that look like requests: known fields with hostile values, plus the known-good values.
bodies = (
    st.dictionaries(
        st.sampled_from(FIELDS),
        json_values
        | st.sampled_from(["tiny", "alpha", "../alpha", "/etc", "hi", 0, 1, 2, 0.5, True, [1, 2], [[3], [4, 5]]]),
        max_size=8,
    )
    | json_values
)


@pytest.fixture(scope="module")
def client(tiny_dirs, tmp_path_factory):
    base, adapters = llama_with_adapters(tiny_dirs, tmp_path_factory.mktemp("fuzz-adapters"), ["alpha"], 3)
    registry = AdapterRegistry(base, adapters)
    registry.scan()
    engine = Engine(base, registry, EngineConfig(max_batch_size=4))
    config = ServeConfig(
        served_model_name="tiny", max_tokens=4, default_max_tokens=4, max_prompt_tokens=64, enable_adapter_admin=True
    )
    with TestClient(create_app(engine, config)) as test_client:
        yield test_client


def _check(response) -> None:
    assert response.status_code < 500, response.text
    if response.status_code >= 400:
        error = response.json()["error"]
        assert isinstance(error["message"], str) and error["message"] and "\n" not in error["message"]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=bodies, path=st.sampled_from(["/v1/completions", "/v1/chat/completions", "/v1/adapters"]))
def test_any_json_body_gets_a_clean_answer(client, body, path):
    _check(client.post(path, content=json.dumps(body, allow_nan=True)))


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(raw=st.binary(max_size=200))
def test_any_bytes_get_a_clean_answer(client, raw):
    _check(client.post("/v1/completions", content=raw, headers={"content-type": "application/json"}))


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=st.text(max_size=30))
def test_any_adapter_name_in_a_path_gets_a_clean_answer(client, name):
    _check(client.delete(f"/v1/adapters/{quote(name, safe='')}"))
