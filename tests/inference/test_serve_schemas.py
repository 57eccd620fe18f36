"""Request bodies (serve/schemas.py): a value of the wrong type or range is a 400 naming the field."""

from __future__ import annotations

import pytest

from tests.inference.serving import openai_error


@pytest.mark.parametrize(
    "body,param",
    [
        ({"model": "alpha", "prompt": "x", "temperature": "hot"}, "temperature"),
        ({"model": "alpha", "prompt": 5}, "prompt"),
        ({"model": "alpha"}, "prompt"),
        ({"model": "alpha", "prompt": "x", "n": 17}, "n"),
        ({"model": "alpha", "messages": []}, "messages"),
        ({"model": "alpha", "messages": [{"role": "user", "content": "x"}], "logprobs": 3}, "logprobs"),
        ({"model": "alpha", "prompt": "x", "logprobs": 21}, "logprobs"),
        ({"model": "alpha", "prompt": "x", "logprobs": True}, "logprobs"),
        ({"model": "alpha", "prompt": "x", "echo": "yes"}, "echo"),
        ({"model": "alpha", "prompt": "x", "seed": 2**64}, "seed"),
        ({"model": "alpha", "prompt": [[1, 2], []]}, "prompt"),
        ({"model": "alpha", "prompt": [1, "a"]}, "prompt"),
        ({"model": "alpha", "prompt": ""}, "prompt"),
        ({"model": "alpha", "prompt": "x", "stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ],
)
def test_wrong_types_are_400_in_openai_shape(raw, body, param):
    path = "/v1/chat/completions" if "messages" in body else "/v1/completions"
    assert openai_error(raw.post(path, json=body), 400)["param"] == param
