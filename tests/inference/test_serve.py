"""End to end: the official openai client against a uvicorn server started here on a tiny model."""

from __future__ import annotations

import threading
import time

import httpx
import openai
import pytest

from softprompt.core.errors import AdapterError, ContextOverflowError, UnknownAdapterError
from softprompt.core.prompt import PromptConfig
from softprompt.core.prompted import SoftPromptModel
from softprompt.inference.engine import AdapterRegistry, Engine, SamplingParams
from softprompt.inference.serve import ServeConfig
from tests.conftest import load_tiny
from tests.inference.serving import Throttle, llama_with_adapters, long_prompt, running, slowed, tiny_engine
from tests.inference.test_engine_registry import save_prompts

MODEL = "tiny"
LIMITS = dict(max_concurrent=2, max_tokens=64, max_prompt_tokens=100, max_body_bytes=4096, default_max_tokens=8)


@pytest.fixture(scope="module")
def server(tiny_dirs, tmp_path_factory):
    base, adapters = llama_with_adapters(tiny_dirs, tmp_path_factory.mktemp("adapters"), ["alpha", "beta"], 5)
    for name, form, entry in (("deep", "kv", 0), ("late", "vectors", 1)):  # served like every prompt
        config = PromptConfig(num_virtual_tokens=4, init="vocab", form=form, entry_layer=entry)
        SoftPromptModel.with_new_prompt(base, config, seed=len(name)).save_pretrained(adapters / name)
    engine = tiny_engine(base, adapters)
    slow = Throttle(engine)
    # Admin on without a key: allowed on loopback only (tests/inference/test_serve_auth.py covers the key).
    config = ServeConfig(served_model_name=MODEL, enable_adapter_admin=True, **LIMITS)
    reference = Engine(base, AdapterRegistry(base, adapters))
    reference.registry.scan()
    with running(engine, config) as (url, uv):
        yield url, reference, slow


@pytest.fixture
def client(server):
    url, _, slow = server
    slow.delay = 0.0
    with openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=30) as c:
        yield c


@pytest.fixture
def raw(server):
    with httpx.Client(base_url=server[0], timeout=30) as c:
        yield c


def _expected(server, text, adapter, n=8, chat=False):
    _, reference, _ = server
    tokenizer = reference.base.tokenizer
    if chat:
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True
        )
    ids = list(tokenizer(text, add_special_tokens=not chat)["input_ids"])
    return reference.run([reference.add_request(ids, adapter, SamplingParams(max_new_tokens=n))])[0]


def test_models_lists_base_and_adapters(client):
    assert [m.id for m in client.models.list().data] == [MODEL, "alpha", "beta", "deep", "late"]


@pytest.mark.parametrize(
    "model,adapter", [("alpha", "alpha"), ("beta", "beta"), ("deep", "deep"), ("late", "late"), (MODEL, None)]
)
def test_completion_matches_the_engine_and_counts_usage(client, server, model, adapter):
    out = client.completions.create(model=model, prompt="hello there", max_tokens=8, temperature=0)
    want = _expected(server, "hello there", adapter)
    assert out.choices[0].text == want.text and out.choices[0].finish_reason == want.finish_reason
    assert out.usage.prompt_tokens == len(want.prompt_ids) and out.usage.completion_tokens == len(want.output_ids)
    assert out.model == model and out.object == "text_completion"


def test_chat_applies_the_template(client, server):
    out = client.chat.completions.create(
        model="beta", messages=[{"role": "user", "content": "hi"}], max_tokens=6, temperature=0
    )
    assert out.choices[0].message.content == _expected(server, "hi", "beta", 6, chat=True).text
    assert out.choices[0].message.role == "assistant"


def test_completion_stream_joins_to_the_same_text(client, server):
    chunks = list(
        client.completions.create(
            model="alpha",
            prompt="abc",
            max_tokens=10,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text == _expected(server, "abc", "alpha", 10).text
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] in ("stop", "length")
    assert chunks[-1].usage is not None and chunks[-1].usage.prompt_tokens == 3


def test_chat_stream_and_done_marker(client, server, raw):
    chunks = list(
        client.chat.completions.create(
            model="alpha", messages=[{"role": "user", "content": "yo"}], max_tokens=7, temperature=0, stream=True
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == _expected(server, "yo", "alpha", 7, True).text
    body = raw.post("/v1/completions", json={"model": "alpha", "prompt": "x", "max_tokens": 2, "stream": True}).text
    assert body.rstrip().endswith("data: [DONE]")


def test_concurrent_mixed_adapter_requests_are_exact(client, server):
    jobs = [("alpha", "one"), ("beta", "two two three")]  # the server takes 2 at once
    results: dict[int, str] = {}

    def call(i, model, prompt):
        results[i] = client.completions.create(model=model, prompt=prompt, max_tokens=8, temperature=0).choices[0].text

    threads = [threading.Thread(target=call, args=(i, *job)) for i, job in enumerate(jobs)]
    [t.start() for t in threads]
    [t.join(30) for t in threads]
    for i, (model, prompt) in enumerate(jobs):
        assert results[i] == _expected(server, prompt, None if model == MODEL else model).text


def test_seeded_sampling_is_reproducible(client):
    kwargs = dict(model="alpha", prompt="seed me", max_tokens=8, temperature=1.0, top_p=0.9, seed=11)
    assert client.completions.create(**kwargs).choices[0].text == client.completions.create(**kwargs).choices[0].text


def test_stop_strings_cut_the_text(client, server):
    free = _expected(server, "hello there", "alpha", 20).text
    stop = next(free[i : i + 2] for i in range(1, len(free)) if free[i : i + 2].isascii())
    out = client.completions.create(model="alpha", prompt="hello there", max_tokens=20, temperature=0, stop=[stop])
    assert out.choices[0].text == free[: free.find(stop)] and out.choices[0].finish_reason == "stop"


def _error(response: httpx.Response, status: int) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    return error


def test_unknown_model_is_404(client):
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="nope", prompt="x", max_tokens=2)


def test_limits_are_400(client):
    with pytest.raises(openai.BadRequestError, match="max_tokens"):
        client.completions.create(model="alpha", prompt="x", max_tokens=65)
    with pytest.raises(openai.BadRequestError, match="limit of 100"):
        client.completions.create(model="alpha", prompt="y" * 101, max_tokens=2)


@pytest.mark.parametrize(
    "body,param",
    [
        ({"model": "alpha", "prompt": "x", "temperature": "hot"}, "temperature"),
        ({"model": "alpha", "prompt": 5}, "prompt"),
        ({"model": "alpha"}, "prompt"),
        ({"model": "alpha", "prompt": "x", "n": 17}, "n"),
        ({"model": "alpha", "prompt": ["x", "y"], "n": 2}, "n"),  # 4 sequences, more than max_concurrent
        ({"model": "alpha", "prompt": "x", "max_tokens": 0}, "max_tokens"),
        ({"model": "alpha", "messages": []}, "messages"),
        ({"model": "alpha", "messages": [{"role": "user", "content": "x"}], "top_logprobs": 2}, "top_logprobs"),
        ({"model": "alpha", "messages": [{"role": "user", "content": "x"}], "logprobs": 3}, "logprobs"),
        ({"model": "alpha", "prompt": "x", "logprobs": 21}, "logprobs"),
        ({"model": "alpha", "prompt": "x", "logprobs": True}, "logprobs"),
        ({"model": "alpha", "prompt": "x", "echo": "yes"}, "echo"),
        ({"model": "alpha", "prompt": "x", "best_of": 3}, "best_of"),
        ({"model": "alpha", "prompt": "x", "suffix": "end"}, "suffix"),
        ({"model": "alpha", "prompt": "x", "presence_penalty": 0.5}, "presence_penalty"),
        ({"model": "alpha", "prompt": "x", "logit_bias": {"5": 1.0}}, "logit_bias"),
        ({"model": "alpha", "prompt": "x", "seed": 2**64}, "seed"),
        ({"model": "alpha", "prompt": [1, 2, 999]}, "prompt"),
        ({"model": "alpha", "prompt": [[1, 2], [-1]]}, "prompt"),
        ({"model": "alpha", "prompt": [[1, 2], []]}, "prompt"),
        ({"model": "alpha", "prompt": [1, "a"]}, "prompt"),
        ({"model": "alpha", "prompt": ""}, "prompt"),
        ({"model": "alpha", "prompt": "x", "stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ],
)
def test_wrong_types_are_400_in_openai_shape(raw, body, param):
    path = "/v1/chat/completions" if "messages" in body else "/v1/completions"
    assert _error(raw.post(path, json=body), 400)["param"] == param


def test_an_unpaired_surrogate_is_400_naming_the_field(raw):
    """JSON's "\\ud800" decodes to text no tokenizer takes: a 400, not a crash in the tokenizer."""
    headers = {"content-type": "application/json"}
    completion = b'{"model": "alpha", "prompt": "a\\ud800", "max_tokens": 2}'
    chat = b'{"model": "alpha", "messages": [{"role": "user", "content": "\\ud800"}], "max_tokens": 2}'
    assert _error(raw.post("/v1/completions", content=completion, headers=headers), 400)["param"] == "prompt"
    assert _error(raw.post("/v1/chat/completions", content=chat, headers=headers), 400)["param"] == "messages"


def test_malformed_json_is_400_and_big_body_is_413(raw):
    headers = {"content-type": "application/json"}
    assert _error(raw.post("/v1/completions", content=b'{"model": ', headers=headers), 400)["code"] == "invalid_json"
    assert _error(raw.post("/v1/completions", content=b"[1, 2]", headers=headers), 400)["code"] == "invalid_json"
    assert _error(raw.post("/v1/completions", content=b"{bad"), 400)["code"] == "invalid_json"  # no content type
    big = {"model": "alpha", "prompt": "x" * 5000}
    assert _error(raw.post("/v1/completions", json=big), 413)["type"] == "invalid_request_error"

    def chunked():
        yield b'{"model": "alpha", "prompt": "'
        for _ in range(10):
            yield b"x" * 1000
        yield b'"}'

    _error(raw.post("/v1/completions", content=chunked(), headers=headers), 413)


def _open_stream(raw, model="alpha"):
    body = {"model": model, "prompt": "long story", "max_tokens": 60, "stream": True, "temperature": 0}
    response = raw.send(raw.build_request("POST", "/v1/completions", json=body), stream=True)
    assert response.status_code == 200
    lines = response.iter_lines()
    next(lines)  # the stream has started: the sequence holds a slot
    return response, lines  # dropping the line iterator would close the connection


def _wait_idle(raw, polls: int = 40) -> dict:
    """Idle within ~2 s: sooner than the 60 slowed steps (>= 3 s) an uncancelled stream would take."""
    for _ in range(polls):
        health = raw.get("/health").json()
        if health["active_requests"] == 0 and health["running"] == 0:
            return health
        time.sleep(0.05)
    return health


def test_too_many_concurrent_requests_is_429(client, raw, server):
    slow = server[2]
    slow.delay = 0.05
    streams = [_open_stream(raw), _open_stream(raw, "beta")]
    try:
        with pytest.raises(openai.RateLimitError):
            client.completions.create(model="alpha", prompt="x", max_tokens=2)
    finally:
        [s.close() for s, _ in streams]
    slow.delay = 0.0
    assert _wait_idle(raw)["active_requests"] == 0


def test_client_disconnect_mid_stream_frees_its_slot(raw, server):
    slow = server[2]
    slow.delay = 0.05
    stream, lines = _open_stream(raw)
    assert raw.get("/health").json()["active_requests"] == 1
    stream.close()  # drop the connection mid-stream
    health = _wait_idle(raw)
    slow.delay = 0.0
    assert health["active_requests"] == 0 and health["running"] == 0


def test_adapters_load_and_unload_at_runtime(raw):
    assert raw.post("/v1/adapters", json={"name": "gamma", "path": "beta"}).status_code == 201
    assert "gamma" in [m["id"] for m in raw.get("/v1/models").json()["data"]]
    ok = raw.post("/v1/completions", json={"model": "gamma", "prompt": "x", "max_tokens": 2})
    assert ok.status_code == 200
    assert raw.delete("/v1/adapters/gamma").json()["deleted"] is True
    _error(raw.delete("/v1/adapters/gamma"), 404)
    _error(raw.post("/v1/completions", json={"model": "gamma", "prompt": "x"}), 404)


@pytest.mark.parametrize(
    ("raised", "status", "code"),
    [(UnknownAdapterError("gone"), 404, "model_not_found"), (AdapterError("unknown to the disk"), 400, None)],
)
def test_an_unload_is_answered_by_the_error_type_never_its_words(raw, monkeypatch, raised, status, code):
    def remove(self, name):
        raise raised

    monkeypatch.setattr(AdapterRegistry, "remove", remove)
    assert _error(raw.delete("/v1/adapters/alpha"), status)["code"] == code


@pytest.mark.parametrize(
    ("raised", "status", "param"),
    [(ContextOverflowError("too long"), 400, "max_tokens"), (UnknownAdapterError("gone"), 404, "model")],
)
def test_a_request_is_answered_by_the_error_type_never_its_words(raw, monkeypatch, raised, status, param):
    def make_request(self, *args, **kwargs):
        raise raised

    monkeypatch.setattr(Engine, "make_request", make_request)
    error = _error(raw.post("/v1/completions", json={"model": "alpha", "prompt": "x", "max_tokens": 2}), status)
    assert error["param"] == param


@pytest.mark.parametrize(
    "body", [{"name": "evil", "path": "../.."}, {"name": "evil", "path": "/etc"}, {"name": "../x"}, {"name": "a/b"}]
)
def test_adapter_names_and_paths_never_escape_the_directory(raw, body):
    _error(raw.post("/v1/adapters", json=body), 400)
    assert "evil" not in [m["id"] for m in raw.get("/v1/models").json()["data"]]


def test_adapter_unloaded_while_a_request_waits_is_404_not_500(tiny_dirs, tmp_path):
    """A queued request whose adapter is unloaded before its prefill: 404 model_not_found, stream or not."""
    base = load_tiny(tiny_dirs, "llama")
    save_prompts(base, tmp_path, ["alpha", "gamma"], tokens=3)
    engine = slowed(tiny_engine(base, tmp_path, max_batch_size=1), 0.02)  # one running row: the others wait
    config = ServeConfig(served_model_name=MODEL, enable_adapter_admin=True, max_tokens=64, default_max_tokens=8)
    with running(engine, config) as (url, _), httpx.Client(base_url=url, timeout=30) as http:
        hog = {"model": MODEL, "prompt": long_prompt(base, 40), "max_tokens": 40, "stream": True, "temperature": 0}
        with http.stream("POST", "/v1/completions", json=hog) as response:
            lines = response.iter_lines()  # kept: dropping the iterator would close the connection
            next(lines)  # the hog holds the only batch row
            waiting: dict = {}
            thread = threading.Thread(
                target=lambda: waiting.update(r=http.post("/v1/completions", json={"model": "gamma", "prompt": "x"}))
            )
            thread.start()
            for _ in range(100):
                if len(engine.scheduler.waiting) == 1:
                    break
                time.sleep(0.01)
            assert len(engine.scheduler.waiting) == 1 and len(engine.scheduler.running) == 1
            assert http.delete("/v1/adapters/gamma").status_code == 200
            thread.join(30)
    assert _error(waiting["r"], 404)["code"] == "model_not_found"
