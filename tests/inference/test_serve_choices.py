"""An answer's choices (serve/choices.py) in the rest of OpenAI's request forms: token-id prompts, n > 1,
log-probabilities in the completion and chat shapes, echo (lm-eval's loglikelihood), streamed or not."""

from __future__ import annotations

import json
import math

import httpx
import openai
import pytest

from softprompt.inference.engine import AdapterRegistry, Engine, SamplingParams
from softprompt.inference.serve import ServeConfig
from softprompt.inference.serve.choices import TokenTexts
from tests.inference.serving import llama_with_adapters, running, tiny_engine
from tests.inference.test_engine_sampler import reference_logprobs


@pytest.fixture(scope="module")
def server(tiny_dirs, tmp_path_factory):
    base, adapters = llama_with_adapters(tiny_dirs, tmp_path_factory.mktemp("forms-adapters"), ["alpha"], 4)
    reference = Engine(base, AdapterRegistry(base, adapters))
    reference.registry.scan()
    config = ServeConfig(served_model_name="tiny", max_tokens=32, default_max_tokens=8, max_concurrent=8)
    with running(tiny_engine(base, adapters), config) as (url, _):
        yield url, reference


@pytest.fixture
def client(server):
    with openai.OpenAI(base_url=server[0] + "/v1", api_key="unused", max_retries=0, timeout=30) as c:
        yield c


@pytest.fixture
def raw(server):
    with httpx.Client(base_url=server[0], timeout=30) as c:
        yield c


def _run(server, ids, adapter=None, n=6, **params):
    engine = server[1]
    return engine.run([engine.add_request(list(ids), adapter, SamplingParams(max_new_tokens=n, **params))])[0]


def _ids(server, text):
    return list(server[1].base.tokenizer(text)["input_ids"])


def test_token_id_prompts_equal_the_text_they_encode(client, server):
    ids = _ids(server, "hello there")
    as_text = client.completions.create(model="alpha", prompt="hello there", max_tokens=6, temperature=0)
    as_ids = client.completions.create(model="alpha", prompt=ids, max_tokens=6, temperature=0)
    assert as_ids.choices[0].text == as_text.choices[0].text == _run(server, ids, "alpha").text
    rows = [ids, _ids(server, "xy"), [7]]
    many = client.completions.create(model="alpha", prompt=rows, max_tokens=6, temperature=0)
    assert [c.index for c in many.choices] == [0, 1, 2]
    assert [c.text for c in many.choices] == [_run(server, r, "alpha").text for r in rows]
    assert many.usage.prompt_tokens == sum(map(len, rows))


def test_n_choices_are_prompt_major_and_seeded_per_choice(client, server):
    out = client.completions.create(model="tiny", prompt=["ab", "cd"], n=2, max_tokens=5, temperature=0)
    assert [c.index for c in out.choices] == [0, 1, 2, 3]
    want = [_run(server, _ids(server, p), n=5).text for p in ("ab", "cd")]
    assert [c.text for c in out.choices] == [want[0], want[0], want[1], want[1]]
    assert out.usage.prompt_tokens == 4  # each prompt counted once, not n times
    assert out.usage.completion_tokens == 2 * sum(
        len(_run(server, _ids(server, p), n=5).output_ids) for p in "ab cd".split()
    )
    sampled = client.completions.create(model="tiny", prompt="ab", n=3, max_tokens=8, temperature=1.0, seed=7)
    alone = [
        client.completions.create(model="tiny", prompt="ab", max_tokens=8, temperature=1.0, seed=7 + i)
        for i in range(3)
    ]
    assert [c.text for c in sampled.choices] == [a.choices[0].text for a in alone]  # choice i uses seed + i
    assert len({c.text for c in sampled.choices}) > 1


def test_completion_logprobs_are_the_models(client, server):
    out = client.completions.create(model="alpha", prompt="hello", max_tokens=6, temperature=0, logprobs=2)
    seq = _run(server, _ids(server, "hello"), "alpha")
    lp = out.choices[0].logprobs
    names = TokenTexts(server[1].base.tokenizer)
    assert lp.tokens[: len(seq.output_ids)] == [names(t) for t in seq.output_ids]
    assert len(set(lp.top_logprobs[0])) >= 2  # partial-character tokens get distinct names (bytes:\xNN)
    ref = reference_logprobs(server[1].base, seq.prompt_ids + seq.output_ids, _prompt(server, "alpha"))
    n = len(seq.prompt_ids)
    for i, token in enumerate(seq.output_ids):
        assert abs(lp.token_logprobs[i] - float(ref[n - 1 + i, token])) < 1e-4
        assert len(lp.top_logprobs[i]) in (2, 3) and max(lp.top_logprobs[i].values()) == lp.token_logprobs[i]
    alone = [len(names.of(t)[1].decode("utf-8", "replace")) for t in seq.output_ids]
    assert lp.text_offset[: len(alone)] == [sum(alone[:i]) for i in range(len(alone))]


def _prompt(server, name):
    return server[1].registry._entries[name].prompt.weights


def test_echo_with_max_tokens_0_scores_the_prompt(client, server):
    ids = _ids(server, "the quick fox")
    out = client.completions.create(model="tiny", prompt=ids, max_tokens=0, echo=True, logprobs=1, temperature=0)
    choice = out.choices[0]
    assert choice.text == "the quick fox" and choice.finish_reason == "length"
    assert out.usage.completion_tokens == 0 and out.usage.prompt_tokens == len(ids)
    lp = choice.logprobs
    assert len(lp.token_logprobs) == len(ids) and lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
    ref = reference_logprobs(server[1].base, ids, None)
    assert all(abs(lp.token_logprobs[t] - float(ref[t - 1, ids[t]])) < 1e-4 for t in range(1, len(ids)))
    plain = client.completions.create(model="tiny", prompt="the quick fox", max_tokens=3, echo=True, temperature=0)
    assert plain.choices[0].text == "the quick fox" + _run(server, ids, n=3).text


@pytest.mark.parametrize("greedy", [False, True])
def test_lm_eval_loglikelihood_request(raw, server, greedy):
    """lm-evaluation-harness's local-completions payload, read the way its parse_logprobs reads it."""
    context = _ids(server, "Question: 2+2? Answer:")
    continuation = _run(server, context, "alpha", n=3, stop_at_eos=False).output_ids if greedy else _ids(server, " 4")
    body = {
        "model": "alpha",
        "prompt": [context + continuation, context],
        "temperature": 0,
        "max_tokens": 1,
        "logprobs": 1,
        "seed": 1234,
        "echo": True,
    }
    out = raw.post("/v1/completions", json=body).json()
    ref = reference_logprobs(server[1].base, context + continuation, _prompt(server, "alpha"))
    want = sum(float(ref[len(context) - 1 + i, t]) for i, t in enumerate(continuation))
    choice = sorted(out["choices"], key=lambda c: c["index"])[0]
    ctxlen = len(context)
    scored = choice["logprobs"]["token_logprobs"][ctxlen:-1]
    assert len(choice["logprobs"]["token_logprobs"]) == len(context + continuation) + 1  # + the generated token
    assert math.isclose(sum(scored), want, abs_tol=1e-3)
    tops = choice["logprobs"]["top_logprobs"][ctxlen:-1]
    assert all(tok == max(top.values()) for tok, top in zip(scored, tops)) is greedy


def test_chat_logprobs(client, server):
    out = client.chat.completions.create(
        model="alpha",
        messages=[{"role": "user", "content": "hi"}],
        max_tokens=5,
        temperature=0,
        logprobs=True,
        top_logprobs=3,
    )
    content = out.choices[0].logprobs.content
    assert len(content) >= out.usage.completion_tokens
    assert all(len(t.top_logprobs) == 3 and t.top_logprobs[0].logprob == t.logprob for t in content)
    for t in content:
        raw = bytes(t.bytes)
        assert t.token == (
            "bytes:" + "".join(f"\\x{b:02x}" for b in raw) if t.token.startswith("bytes:") else raw.decode()
        )


def test_streaming_many_choices_with_logprobs_equals_the_plain_answer(client, raw):
    kwargs = dict(model="alpha", prompt=["ab", "xyz"], n=2, max_tokens=7, temperature=0, logprobs=1, echo=True)
    whole = client.completions.create(**kwargs)
    text: dict[int, str] = {}
    tokens: dict[int, list[str]] = {}
    reasons: dict[int, str] = {}
    with raw.stream("POST", "/v1/completions", json={**kwargs, "stream": True}) as response:
        lines = [line for line in response.iter_lines() if line.startswith("data: ")]
    assert lines[-1] == "data: [DONE]"
    for line in lines[:-1]:
        choice = json.loads(line[6:])["choices"][0]
        text[choice["index"]] = text.get(choice["index"], "") + choice["text"]
        tokens.setdefault(choice["index"], []).extend(choice["logprobs"]["tokens"])
        if choice["finish_reason"]:
            reasons[choice["index"]] = choice["finish_reason"]
    assert [text[i] for i in range(4)] == [c.text for c in whole.choices]
    assert [tokens[i] for i in range(4)] == [c.logprobs.tokens for c in whole.choices]
    assert set(reasons) == {0, 1, 2, 3}


def test_chat_stream_with_n(client):
    chunks = list(
        client.chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": "yo"}], n=2, max_tokens=4, temperature=0, stream=True
        )
    )
    by_index: dict[int, str] = {}
    for chunk in chunks:
        for c in chunk.choices:
            by_index[c.index] = by_index.get(c.index, "") + (c.delta.content or "")
    assert set(by_index) == {0, 1} and by_index[0] == by_index[1]
