"""The engine worker (serve/worker.py): request slots (429 when full) and a dropped stream giving its slot back."""

from __future__ import annotations

import time

import openai
import pytest


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
