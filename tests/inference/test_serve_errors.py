"""Error responses (serve/errors.py): a body that is not a JSON object is a 400 in OpenAI's shape."""

from __future__ import annotations

from tests.inference.serving import openai_error


def test_malformed_json_is_400(raw):
    headers = {"content-type": "application/json"}
    assert (
        openai_error(raw.post("/v1/completions", content=b'{"model": ', headers=headers), 400)["code"] == "invalid_json"
    )
    assert openai_error(raw.post("/v1/completions", content=b"[1, 2]", headers=headers), 400)["code"] == "invalid_json"
    assert openai_error(raw.post("/v1/completions", content=b"{bad"), 400)["code"] == "invalid_json"  # no content type
