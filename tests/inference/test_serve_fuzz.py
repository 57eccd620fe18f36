"""The server's request handling: any body gets a 2xx or an OpenAI-style 4xx with a one-line message, never a 5xx.

Hypothesis-generated bodies through a TestClient, then the byte-level fuzz targets of
fuzz/serve_targets.py (the ones ``python -m fuzz.run --targets serve`` runs) over their seeds and
mutations, and the inputs that fuzzer found.
"""

from __future__ import annotations

import json
import random
from urllib.parse import quote

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fuzz.run import Suite
from fuzz.serve_targets import BadAnswer
from softprompt.inference.engine import AdapterRegistry, Engine, EngineConfig
from softprompt.inference.serve import ServeConfig, create_app
from softprompt.inference.serve.errors import APIError
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


# -- the byte-level server targets of fuzz/serve_targets.py (issue 27), and what they found --------


@pytest.fixture(scope="module")
def suite(tmp_path_factory):
    built = Suite("serve", tmp_path_factory.mktemp("serve-fuzz"))
    yield built
    built.close()


def test_every_server_target_takes_its_seeds_and_mutations(suite):
    """Each seed once, then 150 mutations per target: every answer keeps the contract (seconds)."""
    by_target: dict[int, list[bytes]] = {}
    for data in suite.pool:
        by_target.setdefault(data[0], []).append(data)
        suite.dispatch(data)
    assert sorted(suite.names[i] for i in by_target) == sorted(suite.names)
    rng = random.Random(0)
    for seeds in by_target.values():
        for _ in range(150):
            suite.dispatch(suite.mutate(rng.choice(seeds), suite.pool, rng, 8192))
    assert suite.groups[0].service.worker.active == 0


def test_seeds_reach_generation_streams_and_adapter_admin(suite):
    """The seeds are not all refused: valid bodies run the model, stream, and load and unload adapters."""
    outcomes = {(suite.names[d[0]], suite.dispatch(d)) for d in suite.pool}
    for expected in [
        ("serve_completions", (200, "text_completion", None)),
        ("serve_completions", (200, "stream", None)),
        ("serve_completions", (400, "context_length_exceeded", "max_tokens")),
        ("serve_chat", (200, "chat.completion", None)),
        ("serve_chat", (200, "stream", None)),
        ("serve_adapter_load", (201, "model", None)),
        ("serve_adapter_load", (400, "base_model_mismatch", "path")),
        ("serve_adapter_load", (401, "invalid_api_key", "<other>")),
        ("serve_adapter_get", (200, "adapter", None)),
        ("serve_adapter_delete", (200, "model", None)),
        ("serve_adapter_delete", (404, "model_not_found", "name")),
    ]:
        assert expected in outcomes, expected


def test_the_harness_sees_a_5xx_and_an_escaping_exception(suite, monkeypatch):
    """Not vacuous: a 500 answer and an exception out of the app both raise out of the target."""
    body = b"\x00" + json.dumps({"model": "tiny", "prompt": "hi", "max_tokens": 1}).encode()
    planner = suite.groups[0].service.planner

    def fail(request):
        raise APIError(500, "boom")

    monkeypatch.setattr(planner, "plan", fail)
    with pytest.raises(BadAnswer, match="status 500"):
        suite.groups[0].serve_completions(body)

    def crash(request):
        raise RuntimeError("boom")

    monkeypatch.setattr(planner, "plan", crash)
    with pytest.raises(RuntimeError, match="boom"):
        suite.groups[0].serve_completions(body)
    monkeypatch.undo()
    assert suite.groups[0].serve_completions(body)[0] == 200


# Inputs the fuzzer found (fuzz/regressions/serve_*.bin hold the first three as found), and their kin.
FOUND = [
    # An unknown field whose name holds a line break: the message quoted the name (two lines).
    ("/v1/adapters", b'{"name": "z", "path": "/etc", "\\n": 1}', (400, "invalid_value", "<other>")),
    ("/v1/adapters", b'{"name": "z", "\\u2028' + b"k" * 5000 + b'": 1}', (400, "invalid_value", "<other>")),
    # A logit_bias key with a line break: the same, in a field that takes client keys.
    (
        "/v1/completions",
        b'{"model": "tiny", "prompt": "x", "logit_bias": {"a\\nb": "x"}}',
        (400, "invalid_value", "logit_bias"),
    ),
    # A path with a lone surrogate or a NUL: UnicodeEncodeError / ValueError out of the registry, a 500.
    ("/v1/adapters", b'{"name": "beta", "path": "\\udfff"}', (400, "invalid_value", "path")),
    ("/v1/adapters", b'{"name": "x", "path": "br\\u0000oken"}', (400, "invalid_value", "path")),
    # A path component over 255 bytes: OSError (ENAMETOOLONG) out of the registry, a 500.
    ("/v1/adapters", b'{"name": "gamma", "path": "' + b"a" * 300 + b'"}', (400, None, "path")),
    ("/v1/adapters", b'{"name": "gamma", "path": "' + b"a" * 5000 + b'"}', (400, "invalid_value", "path")),
    # Invalid UTF-8 or nesting past the recursion limit: FastAPI's "error parsing the body", no code.
    ("/v1/completions", b'{"model": "tiny", "prompt": "\xff"}', (400, "invalid_json", "<other>")),
    ("/v1/chat/completions", b"[" * 3000, (400, "invalid_json", "<other>")),
]


@pytest.mark.parametrize("path,content,expected", FOUND, ids=range(len(FOUND)))
def test_found_inputs_get_a_one_line_4xx(suite, path, content, expected):
    assert suite.groups[0]._body(path, b"\x00" + content) == expected


def test_a_json_body_without_a_json_content_type_says_so(client):
    """curl -d sends application/x-www-form-urlencoded: the answer names the header, not 'not an object'."""
    body = json.dumps({"model": "tiny", "prompt": "hi", "max_tokens": 1})
    response = client.post(
        "/v1/completions", content=body, headers={"content-type": "application/x-www-form-urlencoded"}
    )
    assert response.status_code == 400
    assert "Content-Type: application/json" in response.json()["error"]["message"]
    _check(response)
