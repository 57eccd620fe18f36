"""Planning a request (serve/plan.py): every refusal found before a slot is taken, a 400 or 404 naming the field."""

from __future__ import annotations

import openai
import pytest

from softprompt.core.errors import ContextOverflowError, UnknownAdapterError
from softprompt.inference.engine import Engine
from tests.inference.serving import openai_error


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
        ({"model": "alpha", "prompt": ["x", "y"], "n": 2}, "n"),  # 4 sequences, more than max_concurrent
        ({"model": "alpha", "prompt": "x", "max_tokens": 0}, "max_tokens"),
        ({"model": "alpha", "messages": [{"role": "user", "content": "x"}], "top_logprobs": 2}, "top_logprobs"),
        ({"model": "alpha", "prompt": "x", "best_of": 3}, "best_of"),
        ({"model": "alpha", "prompt": "x", "suffix": "end"}, "suffix"),
        ({"model": "alpha", "prompt": "x", "presence_penalty": 0.5}, "presence_penalty"),
        ({"model": "alpha", "prompt": "x", "logit_bias": {"5": 1.0}}, "logit_bias"),
        ({"model": "alpha", "prompt": [1, 2, 999]}, "prompt"),
        ({"model": "alpha", "prompt": [[1, 2], [-1]]}, "prompt"),
    ],
)
def test_values_the_engine_cannot_honour_are_400_naming_the_field(raw, body, param):
    """Well-typed, but past the server's limits, outside the vocabulary, or an option the engine does not have."""
    path = "/v1/chat/completions" if "messages" in body else "/v1/completions"
    assert openai_error(raw.post(path, json=body), 400)["param"] == param


def test_an_unpaired_surrogate_is_400_naming_the_field(raw):
    """JSON's "\\ud800" decodes to text no tokenizer takes: a 400, not a crash in the tokenizer."""
    headers = {"content-type": "application/json"}
    completion = b'{"model": "alpha", "prompt": "a\\ud800", "max_tokens": 2}'
    chat = b'{"model": "alpha", "messages": [{"role": "user", "content": "\\ud800"}], "max_tokens": 2}'
    assert openai_error(raw.post("/v1/completions", content=completion, headers=headers), 400)["param"] == "prompt"
    assert openai_error(raw.post("/v1/chat/completions", content=chat, headers=headers), 400)["param"] == "messages"


@pytest.mark.parametrize(
    ("raised", "status", "param"),
    [(ContextOverflowError("too long"), 400, "max_tokens"), (UnknownAdapterError("gone"), 404, "model")],
)
def test_a_request_is_answered_by_the_error_type_never_its_words(raw, monkeypatch, raised, status, param):
    def make_request(self, *args, **kwargs):
        raise raised

    monkeypatch.setattr(Engine, "make_request", make_request)
    error = openai_error(raw.post("/v1/completions", json={"model": "alpha", "prompt": "x", "max_tokens": 2}), status)
    assert error["param"] == param
