"""The app's routes (serve/app.py) end to end: the official openai client against a uvicorn server started here
on a tiny model (tests/inference/conftest.py): models, completions and chat, streamed or not, adapter admin."""

from __future__ import annotations

import threading

import pytest

from softprompt.core.errors import AdapterError, UnknownAdapterError
from softprompt.inference.engine import AdapterRegistry, SamplingParams
from tests.inference.serving import MODEL, openai_error


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


def test_adapters_load_and_unload_at_runtime(raw):
    assert raw.post("/v1/adapters", json={"name": "gamma", "path": "beta"}).status_code == 201
    assert "gamma" in [m["id"] for m in raw.get("/v1/models").json()["data"]]
    ok = raw.post("/v1/completions", json={"model": "gamma", "prompt": "x", "max_tokens": 2})
    assert ok.status_code == 200
    assert raw.delete("/v1/adapters/gamma").json()["deleted"] is True
    openai_error(raw.delete("/v1/adapters/gamma"), 404)
    openai_error(raw.post("/v1/completions", json={"model": "gamma", "prompt": "x"}), 404)


@pytest.mark.parametrize(
    ("raised", "status", "code"),
    [(UnknownAdapterError("gone"), 404, "model_not_found"), (AdapterError("unknown to the disk"), 400, None)],
)
def test_an_unload_is_answered_by_the_error_type_never_its_words(raw, monkeypatch, raised, status, code):
    def remove(self, name):
        raise raised

    monkeypatch.setattr(AdapterRegistry, "remove", remove)
    assert openai_error(raw.delete("/v1/adapters/alpha"), status)["code"] == code


@pytest.mark.parametrize(
    "body", [{"name": "evil", "path": "../.."}, {"name": "evil", "path": "/etc"}, {"name": "../x"}, {"name": "a/b"}]
)
def test_adapter_names_and_paths_never_escape_the_directory(raw, body):
    openai_error(raw.post("/v1/adapters", json=body), 400)
    assert "evil" not in [m["id"] for m in raw.get("/v1/models").json()["data"]]
