"""The body limit (serve/limits.py): a body over max_body_bytes is a 413, whether it says its size or streams."""

from __future__ import annotations

from tests.inference.serving import openai_error


def test_a_big_body_is_413(raw):
    headers = {"content-type": "application/json"}
    big = {"model": "alpha", "prompt": "x" * 5000}
    assert openai_error(raw.post("/v1/completions", json=big), 413)["type"] == "invalid_request_error"

    def chunked():
        yield b'{"model": "alpha", "prompt": "'
        for _ in range(10):
            yield b"x" * 1000
        yield b'"}'

    openai_error(raw.post("/v1/completions", content=chunked(), headers=headers), 413)
